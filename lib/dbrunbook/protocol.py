"""What the layers agree on: the names shared by the launcher, the runbooks and the records, and the session
interface procedures take.

Kept at the bottom of the package (it imports no other dbrunbook module at run time) so that records, safety,
procedures and the launcher can all use it without an import cycle. ``SessionLike`` is what guards and procedures
take instead of ``Any``: ``execution.session.Session`` is its one implementation (a runbook cell's ``s``), and they
sit below the execution layer, so they name the interface, not the class.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from dbrunbook.config import Config, MigrationSet, Target
    from dbrunbook.postgres.db import DatabaseIdentity

#: Printed by the last cell of every runbook (``Session.finish``). The launcher treats a run without it as
#: incomplete: papermill alone reports success for a kernel that died or timed out.
SENTINEL = "dbrunbook: runbook completed"

#: Parameters the launcher injects itself; an operator cannot set them with -p.
LAUNCHER_PARAMETERS = ("run_id", "record_dir")

#: Signature namespace for SSHSIG (``ssh-keygen -Y verify -n dbrunbook-record``).
SIGNATURE_NAMESPACE = "dbrunbook-record"

#: File names inside a run directory outputs/YYYY/MM/DD/<run-id>/.
NOTEBOOK_FILE = "notebook.ipynb"
STATEMENT_FILE = "statement.json"
SIGNATURE_FILE = "statement.json.sig"
ARTIFACTS_DIR = "artifacts"
INTENT_FILE = "intent.json"

#: Schema and table of the ledger dbrunbook keeps in every database it changes.
LEDGER_SCHEMA = "dbrunbook"
LEDGER_TABLE = "ledger"

#: Parameter names refused by the launcher because they look like secrets.
SECRET_WORDS = ("password", "passwd", "secret", "token", "apikey", "api_key", "credential", "private_key", "dsn")


def now() -> datetime:
    """The one clock of a run: an aware UTC datetime (its intent, step log, statement and ledger row)."""
    return datetime.now(UTC)


@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment for a while, restored after: how the launcher tells the
    kernel it starts (which inherits the environment) where its configuration, lock or second process is."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def artifact_json(body: Any, *, depth: int) -> str:
    """A JSON artifact's text: keys sorted, nested one space a level down to ``depth``, each value below that
    on one line (a table's row count, a finding, a set's revisions), then a newline.

    ``json.dumps(indent=1)`` puts every number and string of a 1,000-table snapshot on a line of its own (a
    third of its bytes were indentation) and runs json's pure-Python encoder; a line per entry is a third
    smaller, greps and diffs entry by entry, and each line is written by json's C encoder.
    """
    return _nested(body, depth, 0) + "\n"


def _nested(value: Any, depth: int, level: int) -> str:
    if isinstance(value, tuple):
        value = list(value)
    if level >= depth or not isinstance(value, dict | list) or not value:
        return json.dumps(value, sort_keys=True, default=str)
    pad = "\n" + " " * (level + 1)
    if isinstance(value, list):
        return "[" + pad + ("," + pad).join(_nested(v, depth, level + 1) for v in value) + "\n" + \
            " " * level + "]"
    items = sorted(value.items(), key=lambda kv: str(kv[0]))
    return "{" + pad + ("," + pad).join(f"{json.dumps(str(k))}: {_nested(v, depth, level + 1)}"
                                        for k, v in items) + "\n" + " " * level + "}"


class SessionLike(Protocol):
    """A run's binding to one target: its engine, configuration, identity and record folder."""

    config: Config
    target: Target
    engine: Engine
    identity: DatabaseIdentity
    run_id: str
    record_dir: Path | None

    def sets(self, migration_set: str | None = "all") -> list[MigrationSet]:
        """The migration sets a parameter names ('all' or None: every set of the project)."""
        ...

    def save_artifact(self, name: str, content: str | bytes) -> str | None:
        """Write ``artifacts/NAME`` of the run's record; the sha256 written, or None outside a recorded run."""
        ...
