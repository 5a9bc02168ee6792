"""Troubleshoot checks of changes made behind the chain's back: schema drift, edited applied migrations.

The schema can change without a revision (by hand, or models changed without one), and a migration file
can change after a database applied it; either way the version table no longer says what the schema is.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.errors import ConfigError
from dbrunbook.procedures.troubleshoot.results import TITLES, CheckResult, Problem, completes
from dbrunbook.procedures.troubleshoot.state import known_revisions, set_state
from dbrunbook.protocol import SessionLike


# --- 7. drift -------------------------------------------------------------------------------------------
def _name_of(obj: Any) -> str:
    if obj is None:
        return ""
    table = getattr(obj, "table", None)
    name = getattr(obj, "name", None)
    if table is not None and name is not None and hasattr(table, "fullname"):
        return f"{table.fullname}.{name}"
    if hasattr(obj, "fullname"):
        return obj.fullname
    return str(name if name is not None else obj)


def describe_diff(diff: tuple) -> dict[str, str]:
    """One of Alembic's compare_metadata diffs as {change, object, detail}."""
    kind, *rest = diff
    if kind.startswith("modify_"):
        schema, table, column = rest[0], rest[1], rest[2]
        existing, new = rest[-2], rest[-1]
        obj = ".".join(x for x in (schema, table, column) if x)
        return {"change": kind, "object": obj, "detail": f"database: {existing!s}; models: {new!s}"}
    if kind in ("add_column", "remove_column"):
        schema, table, column = rest
        obj = ".".join(x for x in (schema, table, column.name) if x)
        return {"change": kind, "object": obj, "detail": str(column.type)}
    target = rest[0] if rest else None
    return {"change": kind, "object": _name_of(target), "detail": ""}


@completes("drift", TITLES["drift"])
def check_drift(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """``alembic check`` at head: the live schema against the models, one row per differing object."""
    problems, notes = [], []
    for m in s.sets(migration_set):
        cur, known = set_state(s, m)
        if set(cur) != set(migrations.heads(m)):
            notes.append(f"{m.name}: skipped, not at head (the models describe the head)")
            continue
        try:
            diffs = migrations.check(m, s.engine)
        except ConfigError as err:
            notes.append(f"{m.name}: skipped, {err}")
            continue
        if not diffs:
            notes.append(f"{m.name}: models and schema agree")
            continue
        evidence = pd.DataFrame([describe_diff(d) for d in diffs], columns=["change", "object", "detail"])
        problems.append(Problem(
            code="drift", title=TITLES["drift"], migration_set=m.name, evidence=evidence,
            cause=(f"The live schema differs from the models at head '{', '.join(cur)}' in {len(diffs)} "
                   f"place(s) ('add_*': in the models, not in the database; 'remove_*': in the database, not in "
                   f"the models). Someone changed the database by hand, or the models changed without a "
                   f"revision. If the models are right, generate one; if the database is, fix the models."),
            next_step=f"dbrunbook new \"<describe the change>\" --autogenerate -m {m.name}",
            queries=("alembic check  (compare_metadata on the target, via the set's env.py)",),
        ))
    return CheckResult("drift", TITLES["drift"], tuple(problems), "; ".join(notes))


# --- 8. edited applied migrations -----------------------------------------------------------------------
@completes("edited_migration", TITLES["edited_migration"])
def check_edited_migrations(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """The guide's *Never edit applied migrations*: a script whose sha256 changed since a run applied it.

    The launcher stores, in ``dbrunbook.ledger.migration_files``, the sha256 of each migration file a run
    applied; this compares the newest of those with the files now (``migrations.file_digests``).
    """
    ledger = records.ledger_rows(s.engine)
    problems, notes = [], []
    for m in s.sets(migration_set):
        applied: dict[str, dict[str, Any]] = {}
        for row in ledger:
            for rev, digest in ((row.get("migration_files") or {}).get(m.name) or {}).items():
                applied[rev] = {"sha256": digest, "run_id": row["run_id"],
                                "when": str(row.get("finished_at") or row.get("started_at") or "")}
        if not applied:
            notes.append(f"{m.name}: no applied file recorded in dbrunbook.ledger")
            continue
        now = migrations.file_digests(m)
        known = known_revisions(m)
        rows = []
        for rev, was in applied.items():
            if now.get(rev) == was["sha256"]:
                continue
            rows.append({"revision": rev, "file": known[rev].path.name if rev in known else "(missing)",
                         "applied_sha256": was["sha256"][:16], "current_sha256": (now.get(rev) or "")[:16],
                         "applied_by": was["run_id"], "applied_at": was["when"]})
        if not rows:
            notes.append(f"{m.name}: {len(applied)} applied file(s) unchanged")
            continue
        evidence = pd.DataFrame(rows, columns=["revision", "file", "applied_sha256", "current_sha256",
                                               "applied_by", "applied_at"])
        revs = ", ".join(r["revision"] for r in rows)
        problems.append(Problem(
            code="edited_migration", title=TITLES["edited_migration"], migration_set=m.name, evidence=evidence,
            cause=(f"The file(s) of revision(s) {revs} changed after run '{rows[0]['applied_by']}' applied them: "
                   f"this database ran the old content, a fresh one would run the new, and nothing re-runs the "
                   f"difference here. Restore the applied content (git log -p on the file) and put the change "
                   f"in a new revision (the guide: create a new migration instead)."),
            next_step=f"dbrunbook new \"<what the edit changes>\" -m {m.name}",
            queries=("SELECT run_id, migration_files FROM dbrunbook.ledger ORDER BY id",),
        ))
    return CheckResult("edited_migration", TITLES["edited_migration"], tuple(problems), "; ".join(notes))

