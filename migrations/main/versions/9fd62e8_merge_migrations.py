"""Merge migrations

Revision ID: 9fd62e8
Revises: 004, 003s
Create Date: 2024-11-20 17:05:26.338120

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '9fd62e8'
down_revision: Union[str, Sequence[str], None] = ('004', '003s')
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    pass


def downgrade() -> None:
    """Downgrade schema."""
    pass
