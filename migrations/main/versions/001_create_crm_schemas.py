"""Create CRM schemas

Revision ID: 001
Revises:
Create Date: 2024-09-02 09:14:03.512204

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("CREATE SCHEMA IF NOT EXISTS crm")
    op.create_table(
        'customers',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('email', sa.String(length=255), nullable=False),
        sa.Column('first_name', sa.String(length=100), nullable=False),
        sa.Column('last_name', sa.String(length=100), nullable=False),
        sa.Column('phone', sa.String(length=32), nullable=True),
        sa.Column('status', sa.String(length=20), server_default='active', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_customers'),
        sa.UniqueConstraint('email', name='uq_customers_email'),
        schema='crm',
    )
    op.create_table(
        'contacts',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('note', sa.Text(), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['crm.customers.id'],
                                name='fk_contacts_customer_id_customers', ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name='pk_contacts'),
        schema='crm',
    )
    op.create_index('ix_contacts_customer_id', 'contacts', ['customer_id'], schema='crm')
    op.create_index('ix_contacts_kind', 'contacts', ['kind'], schema='crm')
    op.create_table(
        'leads',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('email', sa.String(length=255), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=True),
        sa.Column('source', sa.String(length=50), nullable=False),
        sa.Column('status', sa.String(length=20), server_default='new', nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['crm.customers.id'],
                                name='fk_leads_customer_id_customers', ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name='pk_leads'),
        schema='crm',
    )
    op.create_index('ix_leads_email', 'leads', ['email'], schema='crm')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_leads_email', table_name='leads', schema='crm')
    op.drop_table('leads', schema='crm')
    op.drop_index('ix_contacts_kind', table_name='contacts', schema='crm')
    op.drop_index('ix_contacts_customer_id', table_name='contacts', schema='crm')
    op.drop_table('contacts', schema='crm')
    op.drop_table('customers', schema='crm')
    op.execute("DROP SCHEMA crm")
