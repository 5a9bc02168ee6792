"""Update chat system with new models

Revision ID: cdf6709a3b1e
Revises: 56d701cf2472
Create Date: 2025-01-08 09:41:17.250388

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'cdf6709a3b1e'
down_revision: Union[str, Sequence[str], None] = '56d701cf2472'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column('models', sa.Column('supports_chat', sa.Boolean(), server_default=sa.text('false'),
                                      nullable=False), schema='ai')
    op.create_table(
        'conversations',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=True),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['model_id'], ['ai.models.id'], name='fk_conversations_model_id_models'),
        sa.PrimaryKeyConstraint('id', name='pk_conversations'),
        schema='ai',
    )
    op.create_index('ix_conversations_user_id', 'conversations', ['user_id'], schema='ai')
    op.create_table(
        'messages',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('content', sa.Text(), nullable=False),
        sa.Column('token_count', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['ai.conversations.id'],
                                name='fk_messages_conversation_id_conversations', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_messages'),
        schema='ai',
    )
    op.create_index('ix_messages_conversation_id', 'messages', ['conversation_id'], schema='ai')
    op.add_column('requests', sa.Column('conversation_id', sa.Integer(), nullable=True), schema='ai')
    op.create_foreign_key('fk_requests_conversation_id_conversations', 'requests', 'conversations',
                          ['conversation_id'], ['id'], source_schema='ai', referent_schema='ai',
                          ondelete='SET NULL')
    op.create_index('ix_requests_conversation_id', 'requests', ['conversation_id'], schema='ai')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_requests_conversation_id', table_name='requests', schema='ai')
    op.drop_constraint('fk_requests_conversation_id_conversations', 'requests', type_='foreignkey',
                       schema='ai')
    op.drop_column('requests', 'conversation_id', schema='ai')
    op.drop_index('ix_messages_conversation_id', table_name='messages', schema='ai')
    op.drop_table('messages', schema='ai')
    op.drop_index('ix_conversations_user_id', table_name='conversations', schema='ai')
    op.drop_table('conversations', schema='ai')
    op.drop_column('models', 'supports_chat', schema='ai')
