"""Synthetic Alembic projects for the scale benchmark and tests: N trivial revisions, linear or with merges.

Each revision creates one small table. With ``merges``, the chain forks into two revisions and merges them
back ``merges`` times, evenly spread (a diamond: fork, two siblings, merge), so the graph has real merge
points while keeping N revisions in all.
"""

from __future__ import annotations

from pathlib import Path

from _common import trust_operator_key

ENV_PY = '''"""Environment of a synthetic chain: the connection dbrunbook passes, else the ini's URL."""
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
OPTS = {"version_table": "alembic_version", "transaction_per_migration": True}


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **OPTS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, **OPTS)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, **OPTS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''

REVISION = '''"""create table t{i:04d}

Revision ID: {rev}
Revises: {down_doc}
Create Date: 2026-12-01 00:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
    op.create_table("t{i:04d}", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))


def downgrade():
    op.drop_table("t{i:04d}")
'''

INI = """[alembic]
script_location = {here}
version_locations = {here}/versions
path_separator = os
sqlalchemy.url = {url}

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


def rev_id(i: int) -> str:
    return f"r{i:04d}aaaaaaa"[:12]


def _parents(n: int, merges: int) -> list:
    """down_revision of each of n revisions: a chain with ``merges`` diamonds spread evenly."""
    down: list = [None]
    spacing = n // (merges + 1) if merges else n + 1
    i = 1
    forks = 0
    while i < n:
        if merges and forks < merges and i % spacing == 0 and i + 2 < n:
            base = rev_id(i - 1)
            down += [base, base, (rev_id(i), rev_id(i + 1))]  # two siblings, then their merge
            forks += 1
            i += 3
            continue
        down.append(rev_id(i - 1))
        i += 1
    return down[:n]


def make_chain(folder: Path, n: int, *, merges: int = 0, url: str = "postgresql+psycopg://localhost/x") -> Path:
    """Write an Alembic project of ``n`` revisions into ``folder``; returns its alembic.ini."""
    versions = folder / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (folder / "env.py").write_text(ENV_PY)
    (folder / "script.py.mako").write_text("")
    for i, down in enumerate(_parents(n, merges)):
        doc = ", ".join(down) if isinstance(down, tuple) else down
        (versions / f"{rev_id(i)}_t{i:04d}.py").write_text(
            REVISION.format(i=i, rev=rev_id(i), down=down, down_doc=doc))
    ini = folder / "alembic.ini"
    ini.write_text(INI.format(here=folder, url=url.replace("%", "%%")))
    return ini


def write_config(folder: Path, ini: Path, runbooks: Path) -> Path:
    """A dbrunbook.toml with one target (url from $BENCH_TARGET_URL) and one migration set, the chain."""
    path = folder / "dbrunbook.toml"
    path.write_text(f"""
[project]
outputs = "{folder / 'outputs'}"
runbooks = "{runbooks}"
state_dir = "{folder / 'state'}"
default_target = "bench"
[targets.bench]
url_env = "BENCH_TARGET_URL"
[migration_sets.main]
alembic_ini = "{ini}"
version_table = "alembic_version"
""")
    trust_operator_key(path)
    return path
