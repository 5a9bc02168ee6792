"""Backfill users full_name

A data migration in the three safe steps: add the column as nullable, fill it from the existing columns,
then make it NOT NULL. On a large table, split the UPDATE into batches in its own revision instead.

Revision ID: b7e4f0c2d913
Revises: a1b2c3d4e5f6
Create Date: 2025-01-22 15:12:41.660873

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'b7e4f0c2d913'
down_revision: Union[str, Sequence[str], None] = 'a1b2c3d4e5f6'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # 1. Add new column as nullable
    op.add_column('users', sa.Column('full_name', sa.String(length=255), nullable=True))
    # 2. Populate data
    op.execute("UPDATE users SET full_name = first_name || ' ' || last_name")
    # 3. Make column non-nullable
    op.alter_column('users', 'full_name', existing_type=sa.String(length=255), nullable=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_column('users', 'full_name')
