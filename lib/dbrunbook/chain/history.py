"""Reading a migration set: the database's revisions, the scripts' heads and history, revision arguments.

These read the revision graph and the version table, never run env.py: reading must work even where env.py
would connect elsewhere. Revision arguments (``heads``, ``branch@head``, partial ids, ``+1``/``-1``) are
resolved as Alembic would, except that a ``-N`` Alembic would take silently from one of several current
revisions, or across a merge point, is refused with ``AmbiguousRevision`` naming the choices.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from dbrunbook.chain.project import absolute_paths, connected, in_project, script_directory
from dbrunbook.chain.values import RevisionInfo
from dbrunbook.config import MigrationSet
from dbrunbook.errors import AmbiguousRevision, RevisionNotFound

if TYPE_CHECKING:  # pandas is imported where a frame is built: the launcher never needs it
    import pandas as pd

__all__ = ["ambiguous_walk", "ancestry", "current", "heads", "heads_after", "history", "history_frame", "pending",
           "refuse_ambiguous", "resolve", "resolve_in", "revision_not_found", "to_tuple"]


_RELATIVE = re.compile(r"^(?:(?P<branch>.+?)@)?(?P<symbol>\w+?)?(?P<delta>[+-]\d+)$")
_CREATE_DATE = re.compile(r"^Create Date:\s*(.+?)\s*$", re.MULTILINE)


def current(mset: MigrationSet, engine_or_conn: Engine | Connection) -> tuple[str, ...]:
    """Return the revision(s) the database is at, from the set's version table (``()``: base or no table).

    The table is read directly, without env.py: reading must work even where env.py would connect elsewhere.
    """
    with connected(engine_or_conn) as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": mset.version_table,
                                                     "version_table_schema": mset.version_table_schema})
        found = ctx.get_current_heads()
    return tuple(sorted(found))


@absolute_paths
def heads(mset: MigrationSet) -> tuple[str, ...]:
    """Return the head revision(s) of the scripts: more than one means unmerged branches."""
    return tuple(sorted(script_directory(mset).get_heads()))


def _path(mset: MigrationSet, script: Script) -> Path:
    path = Path(script.path)
    return path if path.is_absolute() else (mset.base_dir / path).resolve()


def _info(mset: MigrationSet, script: Script) -> RevisionInfo:
    found = _CREATE_DATE.search(script.module.__doc__ or "")
    return RevisionInfo(
        revision=script.revision,
        down_revisions=tuple(to_tuple(script.down_revision)),
        message=script.doc,
        # The labels the file declares; Alembic's own attribute also carries those inherited from ancestors.
        branch_labels=tuple(sorted(to_tuple(getattr(script.module, "branch_labels", None)))),
        is_head=script.is_head,
        is_base=script.is_base,
        is_merge=script.is_merge_point,
        is_branch_point=script.is_branch_point,
        path=_path(mset, script),
        create_date=found.group(1) if found else None,
    )


def to_tuple(value: Any) -> tuple:
    """One of Alembic's revision attributes (None, an id, or a sequence of ids) as a tuple of ids."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


#: Alembic's walk of a loaded ScriptDirectory, base first: a topological sort that costs ~0.08 s on 1,000
#: revisions with 30 merges, asked for by history, the history table and the revision graph of one status.
#: Kept with the ScriptDirectory object, which script_cache replaces when a version file changes.
_WALKS: weakref.WeakKeyDictionary[ScriptDirectory, tuple[Script, ...]] = weakref.WeakKeyDictionary()


def base_first(script: ScriptDirectory) -> tuple[Script, ...]:
    """Every revision of ``script``, base first, each after all of its parents (``walk_revisions`` reversed)."""
    walk = _WALKS.get(script)
    if walk is None:
        walk = _WALKS[script] = tuple(reversed(list(script.walk_revisions())))
    return walk


#: What a status asks twice of the same loaded scripts, kept with them like ``_WALKS``: each revision's
#: ``RevisionInfo`` (per project folder, which its path is relative to), and the upgrade plan from a database
#: position (Alembic's ``_upgrade_revs``, a topological sort of ~0.12 s on 1,000 revisions, asked by the status
#: table and again by the pending table).
_INFOS: weakref.WeakKeyDictionary[ScriptDirectory, dict[Path, dict[str, RevisionInfo]]] = \
    weakref.WeakKeyDictionary()
_PLANS: weakref.WeakKeyDictionary[ScriptDirectory, dict[tuple, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _infos(mset: MigrationSet, script: ScriptDirectory) -> dict[str, RevisionInfo]:
    """Every revision's ``RevisionInfo`` by id, read once per loaded ScriptDirectory and project folder."""
    by_folder = _INFOS.setdefault(script, {})
    infos = by_folder.get(mset.base_dir)
    if infos is None:
        infos = by_folder[mset.base_dir] = {s.revision: _info(mset, s) for s in base_first(script)}
    return infos


@absolute_paths
def history(mset: MigrationSet) -> list[RevisionInfo]:
    """Return every revision, base first, in an order where each comes after all of its parents."""
    script = script_directory(mset)
    infos = _infos(mset, script)
    return [infos[s.revision] for s in base_first(script)]


def _applied(script: ScriptDirectory, at: Sequence[str]) -> set[str]:
    """The revisions a database at ``at`` has applied: ``at`` and all their ancestors."""
    if not at:
        return set()
    return {s.revision for s in script.iterate_revisions(tuple(at), "base")}


@absolute_paths
def history_frame(mset: MigrationSet, current: Sequence[str] = ()) -> pd.DataFrame:
    """The guide's "Migration History" table: revision, parents, description, date, status.

    Status is ``current`` for the revisions the database is at, ``applied`` for their ancestors and
    ``pending`` for the rest.
    """
    script = script_directory(mset)
    try:
        done = _applied(script, current)
    except (CommandError, RevisionError) as err:
        raise revision_not_found(mset, ", ".join(current), err) from err
    rows = []
    infos = _infos(mset, script)
    for info in (infos[s.revision] for s in base_first(script)):
        status = "current" if info.revision in current else "applied" if info.revision in done else "pending"
        rows.append({"revision": info.revision, "parents": ", ".join(info.down_revisions),
                     "description": info.message, "date": info.create_date, "status": status})
    import pandas as pd

    return pd.DataFrame(rows, columns=["revision", "parents", "description", "date", "status"])


def revision_not_found(mset: MigrationSet, revision: Any, err: Exception) -> RevisionNotFound:
    """Alembic's CommandError or RevisionError about ``revision`` as our error (raise it ``from err``)."""
    if "Ambiguous walk" in str(err):
        # Where the caller knows the current revisions, ambiguous_walk names the merge and its parents.
        return AmbiguousRevision(str(revision).strip(), mset.name, "counting down crosses a merge revision, "
                                 "and Alembic cannot tell which of its parents to go to", ())
    # Alembic names the id it could not find, which may be one read from the version table rather than
    # the argument (a database stamped by a branch this checkout does not have).
    named = re.search(r"identified by '([^']+)'", str(err))
    return RevisionNotFound(named.group(1) if named else str(revision), mset.name, str(err).rstrip("."))


def heads_after(script: ScriptDirectory, steps: Sequence[Any], start: Sequence[str]) -> tuple[str, ...]:
    """The heads a database at ``start`` is at after ``steps`` (what Alembic writes to the version table)."""
    done = _applied(script, start)
    for step in steps:
        rev = step.revision.revision
        (done.add if step.is_upgrade else done.discard)(rev)
    parents = {p for rev in done for p in to_tuple(script.get_revision(rev).down_revision)}
    return tuple(sorted(done - parents))


@absolute_paths
def resolve(mset: MigrationSet, revision: str,
            current: Sequence[str] | None = None) -> tuple[str, ...]:
    """Resolve a revision argument to full revision ids, as Alembic would.

    Accepts 'heads', 'head', 'base', full or partial ids, 'branch@head', comma-separated lists, and relative
    ones. Relative ids count from ``current`` (the database's revisions, as ``alembic upgrade +1`` /
    ``downgrade -1`` do); without ``current``, '-N' counts down from the heads (Alembic's own reading).

    Raises:
        RevisionNotFound: unknown or ambiguous revision, or a relative step that goes past base or head.
    """
    script = script_directory(mset)
    try:
        with in_project(mset):
            if current is not None:
                refuse_ambiguous(mset, script, revision, current)
            return resolve_in(script, revision, current)
    except (CommandError, RevisionError) as err:
        found = ambiguous_walk(mset, script, revision, current) if current is not None else None
        raise (found or revision_not_found(mset, revision, err)) from err


def resolve_in(script: ScriptDirectory, revision: str, at: Sequence[str] | None) -> tuple[str, ...]:
    """``resolve`` on a loaded ScriptDirectory, relative ids counting from ``at``; raises Alembic's errors."""
    revision = revision.strip()
    if "," in revision:
        return tuple(r for part in revision.split(",") if part.strip() for r in resolve_in(script, part, at))
    relative = _RELATIVE.match(revision)
    up = relative is not None and relative["delta"].startswith("+")
    if relative and at is None and not relative["symbol"]:
        if up:
            raise CommandError(f"relative revision '{revision}' needs the current revision to count from")
        # '-N' without a current position: Alembic's get_revisions counts down from the heads.
    elif relative:
        start = tuple(at or ())
        # Alembic annotates current_rev as str; alembic.command passes the heads tuple too.
        steps = (script._upgrade_revs(revision, start) if up  # type: ignore[arg-type]
                 else script._downgrade_revs(revision, start))  # type: ignore[arg-type]
        return heads_after(script, steps, start)
    # The RevisionMap, not ScriptDirectory.get_revisions, which rewords every failure as "Can't locate".
    # It yields Revision objects, or the string 'base' for a '-N' walk that lands on base: base has no id.
    return tuple(r.revision for r in script.revision_map.get_revisions(revision)
                 if r is not None and not isinstance(r, str))


@absolute_paths
def pending(mset: MigrationSet, engine: Engine | Connection, revision: str = "heads") -> list[RevisionInfo]:
    """Return the revisions ``upgrade(revision)`` would apply, in the order it would apply them.

    Raises:
        RevisionNotFound: ``revision`` is not defined, or is not above where the database is.
    """
    at = current(mset, engine)
    script = script_directory(mset)
    plans = _PLANS.setdefault(script, {})
    plan = plans.get((revision, at))
    if plan is None:
        with in_project(mset):
            try:
                steps = script._upgrade_revs(revision, at)
            except (CommandError, RevisionError) as err:
                raise revision_not_found(mset, revision, err) from err
        plan = plans[(revision, at)] = tuple(step.revision.revision for step in steps)
    infos = _infos(mset, script)
    return [infos[rev] for rev in plan]


def _relative_down(revision: Any) -> int | None:
    """N for a bare '-N' (no branch, no symbol), else None."""
    match = _RELATIVE.match(revision.strip()) if isinstance(revision, str) else None
    if not match or match["branch"] or match["symbol"] or not match["delta"].startswith("-"):
        return None
    return -int(match["delta"])


def refuse_ambiguous(mset: MigrationSet, script: ScriptDirectory, revision: Any, at: Sequence[str]) -> None:
    """'-N' from several current revisions: Alembic picks one of them (with a warning); we ask which."""
    if _relative_down(revision) is None or len(at) < 2:
        return
    raise AmbiguousRevision(
        revision.strip(), mset.name,
        f"the database is at {len(at)} revisions ({', '.join(at)}), and '{revision.strip()}' does not say which "
        f"of them to step back from", tuple(f"{rev}@{revision.strip()}" for rev in sorted(at)))


def ambiguous_walk(mset: MigrationSet, script: ScriptDirectory, revision: Any,
               at: Sequence[str]) -> AmbiguousRevision | None:
    """The error for '-N' that crosses a merge point from ``at`` (Alembic's "Ambiguous walk"), or None."""
    steps = _relative_down(revision)
    if steps is None or len(at) != 1:
        return None
    rev = script.get_revision(at[0])
    for _ in range(steps):
        parents = to_tuple(rev.down_revision)
        if len(parents) > 1:
            return AmbiguousRevision(
                revision.strip(), mset.name,
                f"counting down from {at[0]} reaches merge revision {rev.revision} ({rev.doc}), which has "
                f"{len(parents)} parents: {', '.join(parents)}; going to one of them reverts the merge "
                f"(and what follows it) and leaves both branches applied",
                tuple(parents))
        if not parents:
            return None
        rev = script.get_revision(parents[0])
    return None


def ancestry(known: Mapping[str, RevisionInfo], revisions: Iterable[str]) -> set[str]:
    """``revisions`` and every known revision below them (ids no script defines are left out)."""
    seen: set[str] = set()
    stack = list(revisions)
    while stack:
        rev = stack.pop()
        if rev in seen or rev not in known:
            continue
        seen.add(rev)
        stack.extend(known[rev].down_revisions)
    return seen
