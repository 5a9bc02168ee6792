"""Add social media integration

Revision ID: 003s
Revises: 001s
Create Date: 2024-10-03 10:51:44.190257

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '003s'
down_revision: Union[str, Sequence[str], None] = '001s'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("CREATE SCHEMA IF NOT EXISTS social")
    op.create_table(
        'social_accounts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=True),
        sa.Column('platform', sa.String(length=20), nullable=False),
        sa.Column('handle', sa.String(length=100), nullable=False),
        sa.Column('followers', sa.Integer(), server_default='0', nullable=False),
        sa.Column('connected_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['crm.customers.id'],
                                name='fk_social_accounts_customer_id_customers', ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_social_accounts'),
        schema='social',
    )
    op.create_table(
        'social_posts',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('account_id', sa.Integer(), nullable=False),
        sa.Column('external_id', sa.String(length=64), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('likes', sa.Integer(), server_default='0', nullable=False),
        sa.Column('posted_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['account_id'], ['social.social_accounts.id'],
                                name='fk_social_posts_account_id_social_accounts', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_social_posts'),
        schema='social',
    )
    op.create_index('ix_social_posts_account_id', 'social_posts', ['account_id'], schema='social')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_social_posts_account_id', table_name='social_posts', schema='social')
    op.drop_table('social_posts', schema='social')
    op.drop_table('social_accounts', schema='social')
    op.execute("DROP SCHEMA social")
