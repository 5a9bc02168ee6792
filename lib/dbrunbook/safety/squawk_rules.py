"""squawk's findings: running squawk on each revision's SQL, and classifying what it says.

Raw squawk output on a real Alembic chain is noise (1,399 findings on 123 revisions), so every finding gets
a category and a level an operator can act on: deploy risk weighed by the live table, destructive always
visible, timeouts dropped (dbrunbook sets them on every connection), style as info.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from dbrunbook.errors import ConfigError
from dbrunbook.safety.catalog import Catalog, TableSize


# --- squawk ---------------------------------------------------------------------------------------------
def squawk_binary() -> Path:
    """squawk from the ``squawk-cli`` package, next to this interpreter (the venv's bin) or on PATH.

    Raises:
        ConfigError: squawk is not installed.
    """
    found = shutil.which("squawk", path=str(Path(sys.executable).parent)) or shutil.which("squawk")
    if not found:
        raise ConfigError(f"squawk is not installed next to {sys.executable} nor on PATH. "
                          f"Install it with '{sys.executable} -m pip install squawk-cli'.")
    return Path(found)


def squawk_output(returncode: int, stdout: str) -> list[dict] | None:
    """squawk's findings from its exit status and ``--reporter json`` output; None for a squawk that failed.

    squawk prints a JSON list and exits 0 (clean) or 1 (findings). Anything else, an empty output included, is
    a squawk that failed: read as "no findings" it would pass every migration.
    """
    try:
        found = json.loads(stdout) if stdout.strip() and returncode in (0, 1) else None
    except ValueError:
        return None
    return found if isinstance(found, list) else None


def squawk_said(stdout: str, stderr: str, limit: int = 300) -> str:
    """What a failed squawk said, for its error message."""
    return (stderr or stdout).strip()[:limit] or "no output"


class SquawkRun:
    """``squawk --reporter json`` started on SQL texts (one file each); ``results()`` waits for its findings.

    Started before the rest of a lint, it runs on the other core while Python reads the catalog and the
    revision files (squawk on 1,000 revisions is ~0.1 s of its own).
    """

    def __init__(self, sqls: Sequence[str], pg_version: str | None = None):
        # One file a revision; in memory where the system has it (creating 1,000 files on disk took 0.3 s).
        shm = Path("/dev/shm")
        where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        self._folder = tempfile.TemporaryDirectory(prefix="dbrunbook-lint-", dir=where)
        self._paths: list[Path] = []
        self._process: subprocess.Popen | None = None
        self._args: list[str] = []
        try:
            for i, sql in enumerate(sqls):
                path = Path(self._folder.name) / f"{i:05d}.sql"
                path.write_text(sql, encoding="utf-8")
                self._paths.append(path)
            if not self._paths:
                return
            args = self._args = [str(squawk_binary()), "--reporter", "json", "--no-error-on-unmatched-pattern"]
            if pg_version:
                args.append(f"--pg-version={pg_version}")
            # Its output goes to files: a pipe would stop squawk at 64 KB until results() reads it.
            self._out = Path(self._folder.name) / "squawk.out"
            with open(self._out, "wb") as out, open(self._out.with_suffix(".err"), "wb") as err:
                self._process = subprocess.Popen([*args, *map(str, self._paths)], stdout=out, stderr=err)
        except BaseException:
            self._folder.cleanup()
            raise

    def results(self) -> list[list[dict]]:
        """The findings of each SQL text, in order (waits for squawk; its files are removed).

        Raises:
            ConfigError: squawk did not answer with JSON.
        """
        try:
            if self._process is None:
                return []
            try:
                self._process.wait()
            except BaseException:  # an interrupted lint (the operator's stop): squawk ends with it
                self._process.kill()
                self._process.wait()
                raise
            stdout = self._out.read_text(encoding="utf-8", errors="replace")
            stderr = self._out.with_suffix(".err").read_text(encoding="utf-8", errors="replace")
            code = self._process.returncode
            found = squawk_output(code, stdout)
            if found is None:
                raise ConfigError(f"squawk did not return JSON (exit {code}): {squawk_said(stdout, stderr)}. "
                                  f"Run {self._args[0]} --version to check the installation "
                                  f"(pip install squawk-cli).")
        finally:
            self._folder.cleanup()
        by_file: dict[str, list[dict]] = {}
        for item in found:
            by_file.setdefault(Path(item.get("file", "")).name, []).append(item)
        return [by_file.get(p.name, []) for p in self._paths]

    def stop(self) -> None:
        """End squawk without reading it (the lint failed before it needed the findings)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._folder.cleanup()


#: squawk rule -> (category, weighed by the live table's size). Rules not listed: deploy risk, unweighed.
SQUAWK_RULES: dict[str, tuple[str, bool]] = {
    **{r: ("deploy risk", True) for r in (
        "require-concurrent-index-creation", "require-concurrent-index-deletion", "constraint-missing-not-valid",
        "adding-foreign-key-constraint", "adding-not-nullable-field", "adding-field-with-default",
        "adding-primary-key-constraint", "adding-serial-primary-key-field", "disallowed-unique-constraint",
        "changing-column-type", "adding-required-field", "require-concurrent-reindex",
        "require-concurrent-partition-detach", "prefer-repack")},
    **{r: ("deploy risk", False) for r in (
        "ban-concurrent-index-creation-in-transaction", "transaction-nesting", "ban-uncommitted-transaction",
        "ban-alter-domain-with-add-constraint", "ban-create-domain-with-constraint")},
    **{r: ("destructive", False) for r in (
        "ban-drop-column", "ban-drop-table", "ban-drop-database", "ban-drop-schema", "ban-truncate-cascade",
        "ban-drop-sequence")},
    **{r: ("compatibility", False) for r in (
        "renaming-column", "renaming-table", "renaming-object", "ban-drop-constraint", "ban-drop-not-null",
        "ban-drop-domain", "ban-drop-extension", "ban-alter-identity", "ban-set-schema", "ban-drop-index",
        "ban-drop-generated-expression", "identifier-too-long")},
    **{r: ("style", False) for r in (
        "prefer-text-field", "prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-big-int",
        "prefer-identity", "prefer-timestamptz", "ban-char-field", "prefer-robust-stmts",
        "require-enum-value-ordering", "require-table-schema")},
    "syntax-error": ("preview", False),
}
TIMEOUT_RULES = frozenset({"require-lock-timeout", "require-statement-timeout", "require-timeout-settings"})
#: Always an error: the statement fails when it runs, whatever the table.
FAILS_ALWAYS = frozenset({"ban-concurrent-index-creation-in-transaction"})

#: What to do instead, in Alembic's words, where squawk's help is generic.
INSTEAD: dict[str, str] = {
    "require-concurrent-index-creation": "op.create_index(..., postgresql_concurrently=True) inside "
                                         "`with op.get_context().autocommit_block():`, in its own revision",
    "require-concurrent-index-deletion": "op.drop_index(..., postgresql_concurrently=True) inside "
                                         "`with op.get_context().autocommit_block():`",
    "constraint-missing-not-valid": "add it with postgresql_not_valid=True, then VALIDATE CONSTRAINT in a "
                                    "later revision (takes only SHARE UPDATE EXCLUSIVE)",
    "adding-foreign-key-constraint": "op.create_foreign_key(..., postgresql_not_valid=True), then "
                                     "op.execute('ALTER TABLE ... VALIDATE CONSTRAINT ...') in a later revision",
    "adding-not-nullable-field": "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL "
                                 "(PostgreSQL 12+ skips the scan), each in its own revision",
    "disallowed-unique-constraint": "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING "
                                    "INDEX",
    "changing-column-type": "add a new column, backfill it in batches, switch the application, drop the old "
                            "one",
    "adding-required-field": "add the column nullable (or with a constant server_default), backfill, then "
                             "SET NOT NULL",
    "ban-drop-column": "stop using the column in the application first; back it up if its values matter",
    "ban-drop-table": "stop using the table first; back it up (pg_dump -t) if its rows matter",
    "ban-concurrent-index-creation-in-transaction": "wrap it in `with op.get_context().autocommit_block():`",
}


def classify_squawk(rule: str, *, size: TableSize | None, catalog: Catalog, protected: bool,
                    message: str = "") -> tuple[str, str, str] | None:
    """(category, level, why) for one squawk finding on a table of ``size``; None for a timeout rule."""
    if rule in TIMEOUT_RULES:
        return None
    category, weighed = SQUAWK_RULES.get(rule, ("deploy risk", False))
    message = message.rstrip(".")
    if category == "style":
        return category, "info", message
    if category == "preview":
        return category, "warning", (f"squawk cannot parse this statement ({message}), so it was not linted; "
                                     f"read it yourself")
    if category == "destructive":
        where = f"; the table has {size.describe()} now" if size is not None and size.exists else ""
        return category, "error" if protected else "warning", f"{message}{where}"
    if category == "compatibility":
        return category, "warning", message
    if rule in FAILS_ALWAYS:
        return category, "error", f"{message}: this statement fails when it runs"
    if not weighed or size is None:
        return category, "warning", message
    return (category, *weigh_by_size(rule, size, catalog, message))


def weigh_by_size(rule: str, size: TableSize, catalog: Catalog, message: str) -> tuple[str, str]:
    """(level, why) of a lock or scan on a table, by its live size and whether it exists before the run."""
    if not size.exists:
        return "info", f"{message}; harmless here: {size.name} does not exist before this run"
    if rule == "adding-required-field":
        if size.rows:
            return "error", (f"{message}; table {size.name} has {size.describe()}: the statement fails on "
                             f"existing rows")
        return "info", f"{message}; harmless here: table {size.name} is empty"
    if catalog.is_big(size):
        return "error", (f"{message}; table {size.name} has {size.describe()}: every read or write waits "
                         f"for the whole operation")
    return "info", f"{message}; harmless at this size: table {size.name} has {size.describe()}"
