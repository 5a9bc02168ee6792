"""Update indexes and constraints

Revision ID: ea90695
Revises: 9fd62e8
Create Date: 2024-12-04 13:47:58.905113

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'ea90695'
down_revision: Union[str, Sequence[str], None] = '9fd62e8'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # Timelines filter by customer and sort by time; 'kind' has four values and was never used alone.
    op.create_index('ix_contacts_customer_id_occurred_at', 'contacts', ['customer_id', 'occurred_at'],
                    schema='crm')
    op.drop_index('ix_contacts_customer_id', table_name='contacts', schema='crm')
    op.drop_index('ix_contacts_kind', table_name='contacts', schema='crm')
    op.create_index('ix_leads_created_at', 'leads', ['created_at'], schema='crm')
    op.create_index('ix_payments_created_at', 'payments', ['created_at'], schema='payments')
    op.create_unique_constraint('uq_social_accounts_platform_handle', 'social_accounts',
                                ['platform', 'handle'], schema='social')
    op.create_check_constraint('ck_payments_amount_positive', 'payments', 'amount_cents > 0',
                               schema='payments')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_constraint('ck_payments_amount_positive', 'payments', type_='check', schema='payments')
    op.drop_constraint('uq_social_accounts_platform_handle', 'social_accounts', type_='unique',
                       schema='social')
    op.drop_index('ix_payments_created_at', table_name='payments', schema='payments')
    op.drop_index('ix_leads_created_at', table_name='leads', schema='crm')
    op.create_index('ix_contacts_kind', 'contacts', ['kind'], schema='crm')
    op.create_index('ix_contacts_customer_id', 'contacts', ['customer_id'], schema='crm')
    op.drop_index('ix_contacts_customer_id_occurred_at', table_name='contacts', schema='crm')
