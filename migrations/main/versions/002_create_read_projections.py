"""Create read projections

Revision ID: 002
Revises: 001
Create Date: 2024-09-10 11:02:37.884410

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '002'
down_revision: Union[str, Sequence[str], None] = '001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("CREATE SCHEMA IF NOT EXISTS read")
    op.create_table(
        'customer_summary',
        sa.Column('customer_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('email', sa.String(length=255), nullable=False),
        sa.Column('full_name', sa.String(length=201), nullable=False),
        sa.Column('contact_count', sa.Integer(), server_default='0', nullable=False),
        sa.Column('last_contact_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('refreshed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'),
                  nullable=False),
        sa.PrimaryKeyConstraint('customer_id', name='pk_customer_summary'),
        schema='read',
    )
    # A materialized view: autogenerate does not see it, so it has no model; it is refreshed by the
    # application (CONCURRENTLY, hence the unique index).
    op.execute(
        """
        CREATE MATERIALIZED VIEW read.lead_funnel_daily AS
        SELECT date_trunc('day', created_at)::date AS day,
               source,
               count(*) AS leads,
               count(customer_id) AS converted
        FROM crm.leads
        GROUP BY 1, 2
        """
    )
    op.execute("CREATE UNIQUE INDEX ux_lead_funnel_daily_day_source ON read.lead_funnel_daily (day, source)")


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP MATERIALIZED VIEW read.lead_funnel_daily")
    op.drop_table('customer_summary', schema='read')
    op.execute("DROP SCHEMA read")
