"""Troubleshoot checks of the version table against the scripts: not up to date, unknown revision, multiple heads.

Each compares what ``alembic current`` says with what the migration scripts define; for an unknown id the
ledger and the signed records say which run put it there, so the revision to stamp to can be named.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from dbrunbook import records
from dbrunbook.chain import migrations
from dbrunbook.chain.history import ancestry
from dbrunbook.config import MigrationSet
from dbrunbook.procedures.troubleshoot.results import TITLES, CheckResult, Problem, completes, run_command
from dbrunbook.procedures.troubleshoot.state import known_revisions, set_state, version_query
from dbrunbook.protocol import STATEMENT_FILE, SessionLike


# --- 1. not up to date ----------------------------------------------------------------------------------
@completes("not_up_to_date", TITLES["not_up_to_date"])
def check_up_to_date(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """The guide's *Target database is not up to date*: ``alembic current`` differs from ``alembic heads``."""
    problems, notes = [], []
    for m in s.sets(migration_set):
        cur, known = set_state(s, m)
        hd = migrations.heads(m)
        if any(c not in known for c in cur):
            notes.append(f"{m.name}: skipped, unknown revision in the version table (check 2)")
            continue
        pend = migrations.pending(m, s.engine)
        if not pend:
            notes.append(f"{m.name}: at {', '.join(cur) or 'base'} = heads")
            continue
        evidence = pd.DataFrame([{"revision": r.revision, "description": r.message, "merge": r.is_merge,
                                  "file": r.path.name} for r in pend],
                                columns=["revision", "description", "merge", "file"])
        runbook = "deploy" if s.target.protected else "apply"
        several = (f"The database has {len(cur)} current revisions: a partial downgrade of a merge (or an "
                   f"interrupted upgrade of several branches) left one version row per branch; upgrading "
                   f"joins them again. " if len(cur) > 1 else "")
        problems.append(Problem(
            code="not_up_to_date", title=TITLES["not_up_to_date"], migration_set=m.name, evidence=evidence,
            cause=(f"alembic current is {', '.join(cur) or '(base)'}; alembic heads is {', '.join(hd)}: "
                   f"{len(pend)} revision(s) are pending. {several}Review them with "
                   f"'{run_command(s, 'preview', migration_set=m.name)}' before applying."),
            next_step=run_command(s, runbook, migration_set=m.name, dry_run=False),
            queries=(version_query(m),),
        ))
    return CheckResult("not_up_to_date", TITLES["not_up_to_date"], tuple(problems), "; ".join(notes))


# --- 2. unknown revision --------------------------------------------------------------------------------
def _sightings(s: SessionLike, mset: MigrationSet) -> list[dict[str, Any]]:
    """Every run (ledger rows of this database, records under outputs/) that moved this set's heads."""
    rows = []
    for row in records.ledger_rows(s.engine):
        before = (row.get("heads_before") or {}).get(mset.name)
        after = (row.get("heads_after") or {}).get(mset.name)
        if after is not None:
            rows.append({"source": "ledger", "run_id": row["run_id"], "runbook": row["runbook"],
                         "when": str(row.get("finished_at") or row.get("started_at") or ""),
                         "heads_before": list(before or []), "heads_after": list(after or [])})
    ident = s.identity
    for run_dir in records.find_records(s.config.outputs_dir):
        path = run_dir / STATEMENT_FILE
        if not path.is_file():
            continue
        try:
            predicate = json.loads(path.read_text(encoding="utf-8"))["predicate"]
        except (ValueError, KeyError):
            continue
        database = predicate.get("database") or {}
        if (database.get("system_identifier"), database.get("database")) != (ident.system_identifier,
                                                                             ident.database):
            continue
        after = (predicate.get("heads_after") or {}).get(mset.name)
        if after is not None:
            rows.append({"source": f"record {run_dir}", "run_id": predicate.get("run_id"),
                         "runbook": predicate.get("runbook"), "when": str(predicate.get("finished_at")),
                         "heads_before": list((predicate.get("heads_before") or {}).get(mset.name) or []),
                         "heads_after": list(after)})
    return rows


def _nearest_known(revision: str, sightings: list[dict], known: dict) -> str | None:
    """Follow 'run went from heads_before to heads_after' edges down from ``revision`` to a known one."""
    frontier, seen = [revision], set()
    while frontier:
        rev = frontier.pop(0)
        if rev in seen:
            continue
        seen.add(rev)
        for row in sightings:
            if rev in row["heads_after"] and rev not in row["heads_before"]:
                for parent in row["heads_before"]:
                    if parent in known:
                        return parent
                    frontier.append(parent)
    return None


@completes("unknown_revision", "Can't locate revision")
def check_unknown_revision(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """The guide's *Can't locate revision identified by …*: the version table names a revision no script has.

    The ledger and the signed records say which run put the unknown id there and from which heads, so the
    nearest known ancestor (what to stamp to) can often be named rather than guessed.
    """
    problems, notes = [], []
    for m in s.sets(migration_set):
        cur, known = set_state(s, m)
        unknown = [c for c in cur if c not in known]
        if not unknown:
            notes.append(f"{m.name}: every id in {m.version_table} has a script")
            continue
        sightings = _sightings(s, m)
        for rev in unknown:
            seen = [r for r in sightings if rev in r["heads_after"] or rev in r["heads_before"]]
            evidence = pd.DataFrame(
                [{**r, "heads_before": ", ".join(r["heads_before"]), "heads_after": ", ".join(r["heads_after"])}
                 for r in seen], columns=["source", "run_id", "runbook", "when", "heads_before", "heads_after"])
            ancestor = _nearest_known(rev, sightings, known)
            others = [c for c in cur if c != rev]
            where = m.alembic_ini.parent if m.alembic_ini else m.script_location
            if ancestor:
                stamp_to = ",".join(sorted(set(others) | {ancestor}))
                later = [r for r in known_revisions(m) if r not in ancestry(known, [ancestor, *others])]
                cause = (f"The version table {m.version_table} says '{rev}', which no script under {where} "
                         f"defines: a rolled-back application or a deleted file. Run "
                         f"'{seen[-1]['run_id'] if seen else '?'}' put it there on top of '{ancestor}'. "
                         f"Stamping to '{ancestor}' records the database as at '{ancestor}' without touching "
                         f"the schema: what '{rev}' changed stays, unknown to the scripts (check drift), and "
                         f"the next upgrade would run {len(later)} revision(s)"
                         f"{': ' + ', '.join(later) if later else ''}. First restore the file (git log "
                         f"--all -- '*{rev}*'); stamp only if it is gone for good.")
                next_step = run_command(s, "stamp", migration_set=m.name, revision=stamp_to, dry_run=False)
            else:
                cause = (f"The version table {m.version_table} says '{rev}', which no script under {where} "
                         f"defines, and no ledger row or record of this database mentions it: the migration "
                         f"file is missing from this checkout (pull the branch that has it), or the database "
                         f"was migrated by another tool. Stamp only once you know which revision the schema "
                         f"really matches (compare with the drift check).")
                next_step = run_command(s, "status", migration_set=m.name)
            problems.append(Problem(
                code="unknown_revision", title=TITLES["unknown_revision"].format(revision=rev),
                migration_set=m.name, evidence=evidence if not evidence.empty else
                f"{version_query(m)} -> {', '.join(cur)}; '{rev}' appears in no ledger row or record.",
                cause=cause, next_step=next_step,
                queries=(version_query(m), "SELECT run_id, runbook, heads_before, heads_after FROM dbrunbook.ledger"),
            ))
    return CheckResult("unknown_revision", "Can't locate revision", tuple(problems), "; ".join(notes))



# --- 6. multiple heads ----------------------------------------------------------------------------------
@completes("multiple_heads", TITLES["multiple_heads"])
def check_multiple_heads(s: SessionLike, migration_set: str = "all") -> CheckResult:
    """More than one head: two lines of development never merged; ``upgrade head`` refuses to choose."""
    problems, notes = [], []
    for m in s.sets(migration_set):
        hd = migrations.heads(m)
        if len(hd) < 2:
            notes.append(f"{m.name}: one head ({', '.join(hd)})")
            continue
        known = known_revisions(m)
        lines = {h: ancestry(known, [h]) for h in hd}
        common = set.intersection(*lines.values())
        cur = set(migrations.current(m, s.engine))
        applied = ancestry(known, cur)
        order = list(known)
        evidence = pd.DataFrame([
            {"head": h, "description": known[h].message,
             "branch": " -> ".join(r for r in order if r in lines[h] - common),
             "branches_from": ", ".join(sorted({p for r in lines[h] - common for p in known[r].down_revisions
                                                if p in common})) or "(base)",
             "applied": h in applied}
            for h in hd], columns=["head", "description", "branch", "branches_from", "applied"])
        heads_ = " ".join(hd)
        problems.append(Problem(
            code="multiple_heads", title=TITLES["multiple_heads"], migration_set=m.name, evidence=evidence,
            cause=(f"Migration set '{m.name}' has {len(hd)} heads ({', '.join(hd)}): two developers branched "
                   f"off the same revision and nobody merged. 'alembic upgrade head' refuses; 'upgrade heads' "
                   f"applies the branches in an order no one reviewed. Merge them: "
                   f"alembic merge -m \"merge heads\" {heads_}"),
            next_step=f"dbrunbook new \"merge heads\" --merge -m {m.name}",
            queries=(),
        ))
    return CheckResult("multiple_heads", TITLES["multiple_heads"], tuple(problems), "; ".join(notes))

