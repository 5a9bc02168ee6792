"""`dbrunbook demo` (make demo): the deploy procedure on the embedded database and the sample migrations.

Resets the embedded database of target ``demo``, brings it to an older revision with the `apply` runbook,
fills it with sample rows, then runs `deploy` (dry_run false) and `verify`, each a signed record, and checks
the records. Everything it changes in the database is done by runbooks, so there is a record of it, except the
sample rows themselves (demo content).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import cast

import sqlalchemy as sa

from dbrunbook import records
from dbrunbook.config import Config
from dbrunbook.postgres import db
from dbrunbook.postgres.db import resolve_url
from dbrunbook.postgres.embedded import EmbeddedServer

DEMO_TARGET = "demo"
#: Where the demo database starts: main before its last two revisions, ai at its first revision.
START = {"main": "ea90695", "ai": "56d701cf2472"}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_demo_data(config: Config):
    # The generator sits beside the sample migration sets it knows (migrations/main, migrations/ai).
    path = config.migration_set("main").base_dir.parent / "demo_data.py"
    spec = importlib.util.spec_from_file_location("dbrunbook_demo_data", path)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo(config: Config) -> list:
    """Run the demo; returns the RunResults of the runs it made."""
    from dbrunbook.execution.runner import run_runbook
    from dbrunbook.records import trust

    if not trust.operator_key_path(config).exists():
        # The demo is the operator's own explicit act: it makes and trusts a local key, and says so.
        key, _line = trust.create_operator_key(config.keys_dir, allowed_signers=config.allowed_signers)
        _say(f"Created a local operator signing key {key} (trusted in {config.allowed_signers}; that is "
             f"'dbrunbook keygen --trust').")
    target = config.target(DEMO_TARGET)
    if target.embedded:
        admin_url = EmbeddedServer.for_config(config).ensure_started()
        _say(f"Embedded PostgreSQL is running: {db.mask_url(admin_url)} (stop it with 'dbrunbook db stop').")
        database = target.database
    else:  # a demo target on another server (the tests point it at theirs): reset that database instead
        url = resolve_url(target, config)
        database = cast(str, sa.make_url(url).database)  # a demo target's URL names its database
        admin_url = db.with_database(url, "postgres")
    db.drop_database(admin_url, database)
    db.create_database(admin_url, database)
    _say(f"Reset database '{database}' for the demo.")

    results = []

    def run(runbook: str, **params: str):
        _say(f"--> dbrunbook run {runbook} -t {DEMO_TARGET} " + " ".join(f"-p {k} {v}" for k, v in params.items()))
        result = run_runbook(runbook, target=DEMO_TARGET, parameters=params, config=config, progress=_say)
        _say(f"    {result.outcome}: {result.record_dir}")
        results.append(result)
        return result

    for name, revision in START.items():
        run("apply", migration_set=name, revision=revision, dry_run="false")
    inserted = _load_demo_data(config).fill(resolve_url(target, config))
    _say(f"Filled sample data: {sum(inserted.values()):,} rows in {len(inserted)} tables.")
    run("deploy", dry_run="false")
    run("verify")
    for result in results:
        check = records.verify_record(result.record_dir, config.allowed_signers)
        _say(f"    verify {result.record_dir.name}: {check.status}")
    print("Signed records:")
    for result in results:
        print(f"  {result.outcome:<18} {result.record_dir}")
    print("Check them with: dbrunbook verify " + str(config.outputs_dir))
    return results
