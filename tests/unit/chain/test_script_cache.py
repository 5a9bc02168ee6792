"""One ScriptDirectory per migration set and process, built again when a revision file changes.

Real Alembic on copies of tests/fixtures/alembic_projects/connection_attr.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "alembic_projects" / "connection_attr"

NEW_REVISION = '''"""add a column"""
revision = "4d3f0b8c2e04"
down_revision = "3c2e9a7b1d03"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


@pytest.fixture
def mset(tmp_path) -> MigrationSet:
    shutil.copytree(FIXTURE, tmp_path / "app")
    return MigrationSet(name="app", alembic_ini=tmp_path / "app" / "alembic.ini")


def test_the_scripts_are_loaded_once_while_no_file_changes(mset):
    first = migrations.script_directory(mset)
    assert migrations.script_directory(mset) is first
    assert migrations.heads(mset) == ("3c2e9a7b1d03",)


def test_a_new_revision_file_is_seen(mset):
    first = migrations.script_directory(mset)
    versions = mset.alembic_ini.parent / "migrations" / "versions"
    (versions / "4d3f0b8c2e04_add_a_column.py").write_text(NEW_REVISION)
    again = migrations.script_directory(mset)
    assert again is not first
    assert migrations.heads(mset) == ("4d3f0b8c2e04",)


def test_an_edited_revision_file_is_loaded_again(mset):
    first = migrations.script_directory(mset)
    path = mset.alembic_ini.parent / "migrations" / "versions" / "3c2e9a7b1d03_index_account_email.py"
    stat = path.stat()
    path.write_text(path.read_text().replace('"""', '"""Edited: ', 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the size still tells
    again = migrations.script_directory(mset)
    assert again is not first
    assert again.get_revision("3c2e9a7b1d03").doc.startswith("Edited: ")


def test_two_copies_of_a_project_do_not_share_scripts(mset, tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "other")
    other = MigrationSet(name="app", alembic_ini=tmp_path / "other" / "alembic.ini")
    assert migrations.script_directory(other) is not migrations.script_directory(mset)
