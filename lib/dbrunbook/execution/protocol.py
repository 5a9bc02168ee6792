"""Conventions shared by the launcher, the runbooks and the records (kept here to avoid import cycles)."""

from __future__ import annotations

from datetime import UTC, datetime

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
