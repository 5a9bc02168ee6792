"""Initial AI router schema

Revision ID: 56d701cf2472
Revises:
Create Date: 2024-10-14 12:08:31.774019

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '56d701cf2472'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("CREATE SCHEMA IF NOT EXISTS ai")
    op.create_table(
        'models',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('provider', sa.String(length=50), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('context_window', sa.Integer(), nullable=False),
        sa.Column('input_cost_per_mtok', sa.Numeric(precision=10, scale=4), nullable=False),
        sa.Column('output_cost_per_mtok', sa.Numeric(precision=10, scale=4), nullable=False),
        sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_models'),
        sa.UniqueConstraint('provider', 'name', name='uq_models_provider_name'),
        schema='ai',
    )
    op.create_table(
        'routes',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('fallback_model_id', sa.Integer(), nullable=True),
        sa.Column('priority', sa.Integer(), server_default='100', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['model_id'], ['ai.models.id'], name='fk_routes_model_id_models'),
        sa.ForeignKeyConstraint(['fallback_model_id'], ['ai.models.id'],
                                name='fk_routes_fallback_model_id_models'),
        sa.PrimaryKeyConstraint('id', name='pk_routes'),
        sa.UniqueConstraint('name', name='uq_routes_name'),
        schema='ai',
    )
    op.create_table(
        'requests',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('route_id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('prompt_tokens', sa.Integer(), nullable=False),
        sa.Column('completion_tokens', sa.Integer(), nullable=False),
        sa.Column('latency_ms', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['route_id'], ['ai.routes.id'], name='fk_requests_route_id_routes'),
        sa.ForeignKeyConstraint(['model_id'], ['ai.models.id'], name='fk_requests_model_id_models'),
        sa.PrimaryKeyConstraint('id', name='pk_requests'),
        schema='ai',
    )
    op.create_index('ix_requests_route_id', 'requests', ['route_id'], schema='ai')
    op.create_index('ix_requests_created_at', 'requests', ['created_at'], schema='ai')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_requests_created_at', table_name='requests', schema='ai')
    op.drop_index('ix_requests_route_id', table_name='requests', schema='ai')
    op.drop_table('requests', schema='ai')
    op.drop_table('routes', schema='ai')
    op.drop_table('models', schema='ai')
    op.execute("DROP SCHEMA ai")
