"""Add station multi-tenant RBAC

Revision ID: 004
Revises: 003n
Create Date: 2024-11-18 08:33:09.471562

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '004'
down_revision: Union[str, Sequence[str], None] = '003n'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'stations',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('code', sa.String(length=16), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('timezone', sa.String(length=64), server_default='UTC', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_stations'),
        sa.UniqueConstraint('code', name='uq_stations_code'),
    )
    op.create_table(
        'roles',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('name', sa.String(length=50), nullable=False),
        sa.Column('description', sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_roles'),
        sa.UniqueConstraint('name', name='uq_roles_name'),
    )
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('email', sa.String(length=255), nullable=False),
        sa.Column('first_name', sa.String(length=100), nullable=False),
        sa.Column('last_name', sa.String(length=100), nullable=False),
        sa.Column('station_id', sa.Integer(), nullable=True),
        sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name='fk_users_station_id_stations'),
        sa.PrimaryKeyConstraint('id', name='pk_users'),
        sa.UniqueConstraint('email', name='uq_users_email'),
    )
    op.create_index('ix_users_station_id', 'users', ['station_id'])
    op.create_table(
        'user_roles',
        sa.Column('user_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('role_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('station_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('granted_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name='fk_user_roles_user_id_users',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['role_id'], ['roles.id'], name='fk_user_roles_role_id_roles',
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['station_id'], ['stations.id'], name='fk_user_roles_station_id_stations',
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id', 'role_id', 'station_id', name='pk_user_roles'),
    )
    # Customers belong to a station from now on; existing customers stay unassigned (NULL).
    op.add_column('customers', sa.Column('station_id', sa.Integer(), nullable=True), schema='crm')
    op.create_foreign_key('fk_customers_station_id_stations', 'customers', 'stations',
                          ['station_id'], ['id'], source_schema='crm')
    op.create_index('ix_customers_station_id', 'customers', ['station_id'], schema='crm')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_customers_station_id', table_name='customers', schema='crm')
    op.drop_constraint('fk_customers_station_id_stations', 'customers', type_='foreignkey', schema='crm')
    op.drop_column('customers', 'station_id', schema='crm')
    op.drop_table('user_roles')
    op.drop_index('ix_users_station_id', table_name='users')
    op.drop_table('users')
    op.drop_table('roles')
    op.drop_table('stations')
