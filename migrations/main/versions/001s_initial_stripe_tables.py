"""Initial Stripe tables

Revision ID: 001s
Revises: 001
Create Date: 2024-09-03 16:40:51.027731

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '001s'
down_revision: Union[str, Sequence[str], None] = '001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.execute("CREATE SCHEMA IF NOT EXISTS payments")
    op.create_table(
        'stripe_customers',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=False),
        sa.Column('stripe_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['customer_id'], ['crm.customers.id'],
                                name='fk_stripe_customers_customer_id_customers'),
        sa.PrimaryKeyConstraint('id', name='pk_stripe_customers'),
        sa.UniqueConstraint('customer_id', name='uq_stripe_customers_customer_id'),
        sa.UniqueConstraint('stripe_id', name='uq_stripe_customers_stripe_id'),
        schema='payments',
    )
    op.create_table(
        'payments',
        sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column('stripe_customer_id', sa.Integer(), nullable=False),
        sa.Column('stripe_payment_intent_id', sa.String(length=64), nullable=False),
        sa.Column('amount_cents', sa.Integer(), nullable=False),
        sa.Column('currency', sa.String(length=3), server_default='usd', nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('description', sa.String(length=255), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['stripe_customer_id'], ['payments.stripe_customers.id'],
                                name='fk_payments_stripe_customer_id_stripe_customers'),
        sa.PrimaryKeyConstraint('id', name='pk_payments'),
        sa.UniqueConstraint('stripe_payment_intent_id', name='uq_payments_stripe_payment_intent_id'),
        schema='payments',
    )
    op.create_index('ix_payments_stripe_customer_id', 'payments', ['stripe_customer_id'], schema='payments')
    op.create_table(
        'refunds',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('payment_id', sa.BigInteger(), nullable=False),
        sa.Column('amount_cents', sa.Integer(), nullable=False),
        sa.Column('reason', sa.String(length=100), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['payment_id'], ['payments.payments.id'],
                                name='fk_refunds_payment_id_payments'),
        sa.PrimaryKeyConstraint('id', name='pk_refunds'),
        schema='payments',
    )
    op.create_index('ix_refunds_payment_id', 'refunds', ['payment_id'], schema='payments')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_refunds_payment_id', table_name='refunds', schema='payments')
    op.drop_table('refunds', schema='payments')
    op.drop_index('ix_payments_stripe_customer_id', table_name='payments', schema='payments')
    op.drop_table('payments', schema='payments')
    op.drop_table('stripe_customers', schema='payments')
    op.execute("DROP SCHEMA payments")
