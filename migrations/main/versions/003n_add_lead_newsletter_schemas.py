"""Add lead newsletter schemas

Revision ID: 003n
Revises: 002
Create Date: 2024-10-01 14:25:12.603918

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '003n'
down_revision: Union[str, Sequence[str], None] = '002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("CREATE SCHEMA IF NOT EXISTS newsletter")
    op.create_table(
        'subscribers',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('email', sa.String(length=255), nullable=False),
        sa.Column('lead_id', sa.Integer(), nullable=True),
        sa.Column('status', sa.String(length=20), server_default='subscribed', nullable=False),
        sa.Column('subscribed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.Column('unsubscribed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['lead_id'], ['crm.leads.id'], name='fk_subscribers_lead_id_leads',
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_subscribers'),
        sa.UniqueConstraint('email', name='uq_subscribers_email'),
        schema='newsletter',
    )
    op.create_table(
        'campaigns',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('subject', sa.String(length=255), nullable=False),
        sa.Column('scheduled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_campaigns'),
        schema='newsletter',
    )
    op.create_table(
        'campaign_sends',
        sa.Column('campaign_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('subscriber_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('opened_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('clicked_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['campaign_id'], ['newsletter.campaigns.id'],
                                name='fk_campaign_sends_campaign_id_campaigns', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['subscriber_id'], ['newsletter.subscribers.id'],
                                name='fk_campaign_sends_subscriber_id_subscribers', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', 'subscriber_id', name='pk_campaign_sends'),
        schema='newsletter',
    )
    op.create_index('ix_campaign_sends_subscriber_id', 'campaign_sends', ['subscriber_id'],
                    schema='newsletter')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_campaign_sends_subscriber_id', table_name='campaign_sends', schema='newsletter')
    op.drop_table('campaign_sends', schema='newsletter')
    op.drop_table('campaigns', schema='newsletter')
    op.drop_table('subscribers', schema='newsletter')
    op.execute("DROP SCHEMA newsletter")
