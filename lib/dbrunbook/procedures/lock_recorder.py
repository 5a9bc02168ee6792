"""The lock recorder: the relation locks each revision held at its commit, going up or down.

PostgreSQL keeps every relation lock until its transaction ends, so what the migrating backend holds just
before each revision's COMMIT is every lock that revision took. A rehearsal reads them on the restored copy
to say, per revision, which tables were locked in which mode and what that mode blocks.
"""

from __future__ import annotations

import logging
from typing import Self

from sqlalchemy import event
from sqlalchemy.engine import Engine

from dbrunbook.chain import migrations
from dbrunbook.config import MigrationSet

log = logging.getLogger(__name__)

__all__ = ["lock_strength", "steps_with_locks", "summarize_locks"]


_BLOCKS = {"AccessShareLock": "nothing but ACCESS EXCLUSIVE", "RowShareLock": "EXCLUSIVE locks",
           "RowExclusiveLock": "SHARE locks (CREATE INDEX)", "ShareUpdateExclusiveLock": "DDL and VACUUM",
           "ShareLock": "writes", "ShareRowExclusiveLock": "writes", "ExclusiveLock": "writes",
           "AccessExclusiveLock": "reads and writes"}
_STRENGTH = list(_BLOCKS)

_LOCKS_SQL = """
SELECT l.relation::bigint, n.nspname, c.relname, c.relkind::text, l.mode
FROM pg_locks l
LEFT JOIN pg_class c ON c.oid = l.relation
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (n.nspname IS NULL OR (n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                             AND n.nspname NOT LIKE 'pg_temp%'))
"""
_NAMES_SQL = ("SELECT c.oid::bigint, n.nspname || '.' || c.relname, c.relkind::text FROM pg_class c "
              "JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')")
_KINDS = {"r": "table", "p": "table", "i": "index", "I": "index", "S": "sequence", "v": "view",
          "m": "materialized view", "t": "toast", "f": "foreign table", "c": "type"}


class _LockRecorder:
    """Lists, at each commit on an engine, the relation locks the committing transaction holds.

    PostgreSQL keeps every relation lock until the end of the transaction that took it, so the locks
    granted at commit are all the locks a revision's statements took (one revision = one transaction),
    each held from the statement that took it until this commit. Read-only transactions (no transaction
    id) are skipped: every revision writes the version table.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.commits: list[list[dict]] = []
        self.names: dict[int, tuple[str, str]] = {}

    def load_names(self) -> None:
        with self.engine.connect() as conn:
            for oid, name, kind in conn.exec_driver_sql(_NAMES_SQL):
                self.names[int(oid)] = (name, _KINDS.get(kind, kind))

    def __enter__(self) -> Self:
        self.load_names()
        event.listen(self.engine, "commit", self._on_commit)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self.engine, "commit", self._on_commit)

    def take(self) -> list[list[dict]]:
        taken, self.commits = self.commits, []
        return taken

    def _on_commit(self, conn) -> None:
        # Inside the committing transaction, on its own backend: it sees the relations this transaction
        # created; dropped ones are named from earlier observations. Never let sampling break a migration.
        try:
            raw = conn.connection.driver_connection
            with raw.cursor() as cur:
                if cur.execute("SELECT txid_current_if_assigned()").fetchone()[0] is None:
                    return
                rows = cur.execute(_LOCKS_SQL).fetchall()
        except Exception as err:  # noqa: BLE001 - evidence, not control flow
            log.warning("could not list the locks at commit: %s", err)
            self.commits.append([{"relation": "(not sampled)", "kind": "", "mode": str(err)[:200]}])
            return
        locks = []
        for oid, schema, name, kind, mode in rows:
            if name is not None:
                self.names[int(oid)] = (f"{schema}.{name}", _KINDS.get(kind, kind))
            label, kind_name = self.names.get(int(oid), (f"(dropped relation, oid {oid})", ""))
            locks.append({"relation": label, "kind": kind_name, "mode": mode})
        self.commits.append(locks)


def lock_strength(mode: str) -> int:
    """Rank of a lock mode from weakest (0) to ACCESS EXCLUSIVE; -1 for a mode that is not a table lock's."""
    return _STRENGTH.index(mode) if mode in _STRENGTH else -1


def summarize_locks(locks: list[dict]) -> list[dict]:
    """One entry per relation: every mode held, the strongest, and what that mode blocks."""
    by_relation: dict[tuple[str, str], set[str]] = {}
    for lock in locks:
        by_relation.setdefault((lock["relation"], lock["kind"]), set()).add(lock["mode"])
    out = []
    for (relation, kind), modes in sorted(by_relation.items()):
        ordered = sorted(modes, key=lock_strength)
        strongest = ordered[-1]
        out.append({"relation": relation, "kind": kind, "modes": ordered, "strongest": strongest,
                    "blocks": _BLOCKS.get(strongest, "")})
    return out


def steps_with_locks(mset: MigrationSet, engine: Engine, direction: str, revision: str
                     ) -> list[tuple[migrations.StepResult, list[dict]]]:
    """``upgrade``/``downgrade`` to ``revision``, each revision's result with the relation locks it held."""
    with _LockRecorder(engine) as recorder:
        go = migrations.upgrade if direction == "upgrade" else migrations.downgrade
        steps = go(mset, engine, revision)
        return list(zip(steps, _aligned(recorder.take(), steps), strict=True))


def _aligned(commits: list[list[dict]], steps: list) -> list[list[dict]]:
    """Pair commits with steps in order (one writing transaction per revision)."""
    if len(commits) != len(steps):
        log.warning("%d commits observed for %d revisions; locks paired in order", len(commits), len(steps))
    return (commits + [[] for _ in steps])[:len(steps)]
