"""Offline SQL (``alembic upgrade A:B --sql``), rendered per revision, and the revisions that cannot render.

Offline SQL is evidence, not a prerequisite: many real revisions read results through ``op.get_bind()``,
use the inspector or refuse offline mode. Such a revision becomes an ``online_only`` step that says why and
where (the line of the revision that needed a connection); the revisions after it are rendered from where it
would have left the database. ``capture`` fills in what the online-only ones really execute.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError

from dbrunbook.chain.environment import EnvRun, environment_context
from dbrunbook.chain.history import (
    ambiguous_walk,
    heads_after,
    refuse_ambiguous,
    resolve_in,
    revision_not_found,
    to_tuple,
)
from dbrunbook.chain.project import absolute_paths, alembic_config, in_project, script_directory, script_directory_for
from dbrunbook.chain.values import SqlStep
from dbrunbook.config import MigrationSet
from dbrunbook.errors import ConfigError, DialectMismatch, RevisionNotFound

__all__ = ["OFFLINE_URL", "offline_sql"]


#: Handed to env.py in offline mode: only its dialect matters, no connection is ever made with it.
OFFLINE_URL = "postgresql+psycopg://dbrunbook-offline/offline"


@absolute_paths
def offline_sql(mset: MigrationSet, start: str | None, end: str = "heads", *, direction: str = "upgrade"
                ) -> list[SqlStep]:
    """Render the SQL from ``start`` to ``end`` offline (``alembic upgrade start:end --sql``), per revision.

    Args:
        start: where the database is: None or 'base', a revision, or comma-separated revisions.
        end: the target; relative ids ('+1', '-1') count from ``start``.
        direction: 'upgrade' or 'downgrade'.

    Each step's SQL is what Alembic wrote to its output buffer while that revision ran (from its BEGIN to its
    COMMIT, the ``-- Running upgrade A -> B`` marker inside); what the migration printed is in ``notes``.

    Offline SQL is evidence, not a prerequisite: a revision that raises while rendering (``op.get_bind()``
    results are None offline, the inspector refuses a mock connection, or it refuses offline mode itself)
    becomes an ``online_only`` step with its reason, and the revisions after it are rendered from where it
    would have left the database (env.py runs again from there).

    Raises:
        RevisionNotFound, DialectMismatch: as for ``upgrade``.
    """
    if direction not in ("upgrade", "downgrade"):
        raise ValueError(f"direction must be 'upgrade' or 'downgrade', not {direction!r}")
    script = script_directory(mset)
    at, planned = _plan(mset, script, start, end, direction)
    out: list[SqlStep] = []
    done = 0
    while done < len(planned):
        segment = planned[done:]
        heads_now = heads_after(script, planned[:done], at) if done else tuple(at)
        run, failure = _render_segment(mset, direction, segment, heads_now, end)
        out += _split(run, complete=failure is None)
        done += len(run.chunks)
        if failure is None:
            break
        error, failed_step = failure
        if failed_step is None:
            # env.py itself cannot run offline: nothing after this point renders.
            reason = f"env.py fails in offline mode ({_error_text(error)})"
            out += [_online_only(step, reason, run.notes.parts.get(_rev_id(step), []))
                    for step in segment[len(run.chunks):]]
            break
        out.append(_online_only(failed_step, _offline_reason(error, failed_step, script),
                                run.notes.parts.get(_rev_id(failed_step), [])))
        done += 1
    return out


def _plan(mset: MigrationSet, script: ScriptDirectory, start: str | None, end: str, direction: str
          ) -> tuple[tuple[str, ...], list[Any]]:
    """Where the range starts (the revision ids) and Alembic's steps from there to ``end``, planned once.

    Planned once: a relative end ('-1', '+2') would count from somewhere else after a restart.
    """
    try:
        with in_project(mset):
            at = resolve_in(script, start, None) if start and start != "base" else ()
    except (CommandError, RevisionError) as err:
        raise revision_not_found(mset, start, err) from err
    if direction == "downgrade" and not at:
        return at, []
    plan = "_upgrade_revs" if direction == "upgrade" else "_downgrade_revs"
    with in_project(mset):
        if direction == "downgrade":
            refuse_ambiguous(mset, script, end, at)
        try:
            return at, list(getattr(script, plan)(end, at))
        except (CommandError, RevisionError) as err:
            raise ambiguous_walk(mset, script, end, at) or revision_not_found(mset, end, err) from err


def _rev_id(step: Any) -> str | None:
    return step.revision.revision if hasattr(step, "revision") else None


def _render_segment(mset: MigrationSet, direction: str, steps: list, heads_now: Sequence[str], end: str
                    ) -> tuple[EnvRun, tuple[BaseException, Any] | None]:
    """Run env.py offline over ``steps``, starting at ``heads_now``; stop at the first step that raises.

    Returns the run (its completed chunks) and, when something raised, the error with the step that raised
    it (None when env.py raised outside any step).
    """
    run = EnvRun(mset, direction, as_sql=True)
    try:
        with in_project(mset, OFFLINE_URL):
            cfg = alembic_config(mset, url=OFFLINE_URL)
            cfg.output_buffer = run.buffer
            script = script_directory_for(mset, cfg)

            def fn(rev: tuple, context: MigrationContext) -> Iterable[Any]:
                return run.steps(steps)

            with contextlib.redirect_stdout(run.notes), \
                    environment_context(cfg, script, run, fn=fn, as_sql=True, starting_rev=tuple(heads_now) or None,
                                 destination_rev=end):
                script.run_env()
    except (DialectMismatch, ConfigError, RevisionNotFound):
        raise
    except Exception as err:  # anything a revision or env.py raises while rendering offline
        if run.running is not None:
            return run, (err, run.running)
        if isinstance(err, RevisionError) or (isinstance(err, CommandError) and "locate revision" in str(err)):
            raise revision_not_found(mset, end, err) from err
        if len(run.chunks) < len(steps):
            return run, (err, None)
        raise
    return run, None


def _error_text(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _offline_reason(err: BaseException, step: Any, script: ScriptDirectory) -> str:
    """Why a revision cannot render offline: the line of the revision that needed a connection, and the error.

    The innermost frame of the traceback that is in the revision's own file is the call that needed a
    connection (or the ``raise`` that refuses offline mode); its path is given relative to script_location.
    """
    path = Path(step.revision.path).resolve()
    frame = None
    for entry in traceback.extract_tb(err.__traceback__):
        with contextlib.suppress(OSError):
            if Path(entry.filename).resolve() == path:
                frame = entry
    what = _error_text(err)
    if frame is None:
        return f"it raised {what}"
    try:
        where = path.relative_to(Path(script.dir).resolve()).as_posix()
    except ValueError:
        where = path.name
    line = (frame.line or "").strip()
    line = line.removeprefix("return ")
    if line.startswith("raise"):
        return f"it raises at {where}:{frame.lineno} ({what})"
    return f"it calls {line} at {where}:{frame.lineno} ({what})" if line else f"{what} at {where}:{frame.lineno}"


def _online_only(step: Any, reason: str, notes: list[str]) -> SqlStep:
    rev = step.revision
    return SqlStep(revision=rev.revision, down_revision=to_tuple(rev.down_revision), message=rev.doc, sql="",
                   notes="".join(notes), online_only=True, reason=reason, source="none")


def _split(run: EnvRun, *, complete: bool = True) -> list[SqlStep]:
    text = run.buffer.getvalue()
    out = []
    for i, (step, begin, finish) in enumerate(run.chunks):
        # Whatever env.py wrote before the first step or after the last belongs to them; after a step that
        # raised, what follows the last completed step is that step's partial output, not this one's.
        begin = 0 if i == 0 else begin
        finish = len(text) if i == len(run.chunks) - 1 and complete else finish
        rev = step.revision
        notes = run.notes.parts.get(rev.revision, [])
        if i == 0:
            notes = run.notes.parts.get(None, []) + notes
        out.append(SqlStep(revision=rev.revision, down_revision=to_tuple(rev.down_revision), message=rev.doc,
                           sql=text[begin:finish].strip("\n") + "\n", notes="".join(notes)))
    return out
