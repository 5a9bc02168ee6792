"""Run one runbook over every target of a group, in waves, each target with its own signed record.

``run_fleet`` is the whole of ``dbrunbook fleet``: the first wave (the canary) must succeed before the next
starts; a later wave stops the fleet when its failures pass ``max_failures``; within a wave up to
``parallel`` targets run at once. Each target is exactly a ``dbrunbook run`` (``runner.run_runbook``), done by
one of ``parallel`` warm worker processes that live for the whole fleet, so the launcher's imports are paid
once per slot, not once per target. SIGINT/SIGTERM stop starting targets; running ones finish and seal their
records (the workers are in their own process group, so a terminal's Ctrl-C does not reach them). Re-running
the same command resumes: a target whose newest valid record is this runbook, with these parameters, over
these migration scripts, succeeded, is skipped and listed as such. The fleet ends with a signed roll-up
record (``fleet_rollup``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import logging
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dbrunbook import records
from dbrunbook.config import X_ARGUMENTS_ENV, Config, load_config
from dbrunbook.errors import DbRunbookError, ParameterError
from dbrunbook.execution.fleet_groups import Member, group_members
from dbrunbook.execution.process import signals_deferred
from dbrunbook.views.tables import grid_html

__all__ = ["FleetResult", "TargetOutcome", "parse_max_failures", "plan_waves", "run_fleet"]

log = logging.getLogger(__name__)

SUCCEEDED, SKIPPED, NOT_STARTED, REFUSED = "succeeded", "skipped", "not-started", "refused"


@dataclass(frozen=True)
class TargetOutcome:
    """How one target of a fleet went: its run's facts, or why it did not run."""

    target: str
    wave: int
    outcome: str  # a run's outcome, "skipped" (done before), "refused" (error before it ran), "not-started"
    run_id: str | None = None
    record_dir: str | None = None
    statement_sha256: str | None = None
    heads_before: dict = field(default_factory=dict)
    heads_after: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.outcome not in (SUCCEEDED, SKIPPED, NOT_STARTED)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("target", "wave", "outcome", "run_id", "record_dir",
                                              "statement_sha256", "heads_before", "heads_after", "seconds",
                                              "error")}


@dataclass(frozen=True)
class FleetResult:
    """What a fleet came to; the same facts are in its signed roll-up record."""

    fleet_id: str
    runbook: str
    group: str
    waves: tuple[tuple[TargetOutcome, ...], ...]
    stopped: str | None  # why later targets did not start, None when every target ran
    record_dir: Path | None = None
    signal: int | None = None

    @property
    def outcomes(self) -> list[TargetOutcome]:
        return [o for wave in self.waves for o in wave]

    def count(self, *outcomes: str) -> int:
        return sum(1 for o in self.outcomes if o.outcome in outcomes)

    @property
    def exit_status(self) -> int:
        if self.signal:
            return 128 + self.signal
        return 1 if self.stopped or any(o.failed for o in self.outcomes) else 0

    def as_json(self) -> dict:
        return {"fleet_id": self.fleet_id, "runbook": self.runbook, "group": self.group, "stopped": self.stopped,
                "record_dir": str(self.record_dir) if self.record_dir else None, "exit_status": self.exit_status,
                "waves": [[o.as_dict() for o in wave] for wave in self.waves]}

    def _repr_html_(self) -> str:
        return grid_html(["wave", "target", "outcome", "run", "s"],
                         [[o.wave, o.target, o.outcome, o.run_id or "", f"{o.seconds:.1f}"] for o in self.outcomes])


# --- plans ------------------------------------------------------------------------------------------------
def plan_waves(members: list[Any], spec: str = "1,rest") -> list[list[Any]]:
    """Cut ``members`` into waves: ``"1,10%,rest"`` is one canary, then 10% of the fleet, then the rest.

    A count or a percentage of the whole fleet (rounded up, at least one) per wave; ``rest`` takes what is
    left, and is implied at the end. Empty waves are dropped.

    Raises:
        ParameterError: a part is not a count, a percentage or ``rest``.
    """
    waves, left = [], list(members)
    for part in [p.strip().lower() for p in str(spec).split(",") if p.strip()]:
        if not left:
            break
        if part == "rest":
            size = len(left)
        elif part.endswith("%") and (percent := _number(part[:-1])) is not None and 0 < percent <= 100:
            size = max(1, math.ceil(len(members) * percent / 100))
        elif part.isdigit() and int(part) > 0:
            size = int(part)
        else:
            raise ParameterError(f"--waves {spec}: '{part}' is not a count (5), a percentage (10%) or 'rest'. "
                                 f"Write it like --waves 1,10%,rest.")
        waves.append(left[:size])
        left = left[size:]
    if left:
        waves.append(left)
    return waves


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_max_failures(text: str | int | None) -> Callable[[int], int]:
    """The failures a wave of a given size may have before it stops the fleet: ``"2"`` or ``"10%"``.

    Raises:
        ParameterError: neither a count nor a percentage.
    """
    value = str(0 if text is None else text).strip()
    if value.endswith("%") and (percent := _number(value[:-1])) is not None and 0 <= percent <= 100:
        return lambda size: math.floor(size * percent / 100)
    if value.isdigit():
        return lambda size: int(value)
    raise ParameterError(f"--max-failures {text}: write a count (2) or a percentage of the wave (10%).")


# --- resume -----------------------------------------------------------------------------------------------
def _wanted_values(config: Config, runbook: str, parameters: dict) -> dict:
    from dbrunbook.execution.runner import find_runbook, validate_parameters

    info = find_runbook(config, runbook)
    return validate_parameters(info, {**parameters, "target": config.default_target})


def _done_before(config: Config, runbook: str, targets: set[str], parameters: dict) -> dict[str, Path]:
    """Targets whose newest valid record of ``runbook`` succeeded with these parameters and these scripts."""
    from dbrunbook.execution.runner import migrations_digest

    wanted = {k: v for k, v in _wanted_values(config, runbook, parameters).items() if k in parameters}
    digest = migrations_digest(config)
    found: dict[str, Path] = {}
    decided: set[str] = set()
    for run_dir in reversed(records.find_records(config.outputs_dir)):
        try:
            predicate = json.loads((run_dir / records.STATEMENT_FILE).read_bytes()).get("predicate") or {}
        except (OSError, ValueError, AttributeError):
            continue
        target = (predicate.get("extra") or {}).get("target") or (predicate.get("parameters") or {}).get("target")
        if target not in targets or target in decided or predicate.get("runbook") != runbook:
            continue
        if records.verify_record(run_dir, config.allowed_signers).status != "valid":
            continue  # an invalid record proves nothing: look at the one before it
        decided.add(target)
        params = predicate.get("parameters") or {}
        if (predicate.get("outcome") == SUCCEEDED and predicate.get("migrations_sha256") == digest
                and all(params.get(k) == v for k, v in wanted.items())):
            found[target] = run_dir
    return found


# --- workers ----------------------------------------------------------------------------------------------
_all_up: list[Any] = []  # in a worker: the barrier every slot meets once it is warm (``_meet``)


def _warm_worker(barrier: Any = None) -> None:
    """Start a worker slot: its own process group (Ctrl-C is the fleet's to handle), the launcher imported,
    and a warm kernel template whose forks are its targets' kernels (``kernel_template``)."""
    _all_up[:] = [barrier]
    with contextlib.suppress(OSError):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import papermill  # noqa: F401 - the cost a worker pays once for all its targets

    from dbrunbook.execution import runner  # noqa: F401
    from dbrunbook.execution.kernel_template import start_template

    start_template()


def _meet() -> None:
    """Wait, in a worker, until every slot is warm (the pool starts a worker only when none is idle)."""
    with contextlib.suppress(Exception):  # a slot that never comes up only leaves the fleet a slot short
        _all_up[0].wait(timeout=300)


def _run_member(config_path: str, runbook: str, member: dict, parameters: dict) -> dict:
    """Run one target in a worker: exactly ``dbrunbook run RUNBOOK -t TARGET -p ...``."""
    from dbrunbook.execution.parameters import mask_secrets
    from dbrunbook.execution.runner import run_runbook

    os.environ.pop(X_ARGUMENTS_ENV, None)  # a warm worker must not carry the last tenant's -x
    os.environ.update(member["env"])
    t0 = time.monotonic()
    try:
        config = load_config(config_path)
        result = run_runbook(runbook, target=member["target"], parameters=parameters, config=config)
    except DbRunbookError as err:
        return {"outcome": REFUSED, "error": mask_secrets(str(err)), "seconds": time.monotonic() - t0}
    except Exception as err:  # reported as this target's failure; the fleet decides whether to go on
        return {"outcome": "failed", "error": mask_secrets(f"{type(err).__name__}: {err}"),
                "seconds": time.monotonic() - t0}
    finally:
        os.environ.pop(X_ARGUMENTS_ENV, None)
    facts = result.as_json()
    facts["seconds"] = time.monotonic() - t0
    facts["error"] = facts.get("seal_error")
    return facts


# --- the fleet --------------------------------------------------------------------------------------------
def run_fleet(runbook: str, group: str, *, parameters: dict[str, Any] | None = None, waves: str = "1,rest",
              parallel: int = 1, max_failures: str | int = 0, config: Config | None = None,
              progress: Callable[[str], None] | None = None) -> FleetResult:
    """Run ``runbook`` on every member of ``group`` in waves; sign the roll-up record; return how it went.

    Args:
        runbook: the runbook, as for ``dbrunbook run``.
        group: a ``[groups.NAME]`` of dbrunbook.toml.
        parameters: ``-p`` values for every target (``target`` is the fleet's to set).
        waves: e.g. ``"1,10%,rest"``; the first wave is the canary and must succeed entirely.
        parallel: targets run at once within a wave (one warm worker process each).
        max_failures: failures a later wave may have (count, or percentage of the wave) before the fleet stops.
        progress: called with one line per target start and end, with the running tally.

    Raises:
        GroupNotFound, GroupQueryFailed, ParameterError, ConfigError: before any target runs.
    """
    from dbrunbook.execution import fleet_rollup

    progress = progress or (lambda line: None)
    config = config or load_config()
    parameters = {k: v for k, v in (parameters or {}).items()}
    if "target" in parameters:
        raise ParameterError("The fleet sets each run's target: drop -p target (choose the group with -g).")
    if parallel < 1:
        raise ParameterError(f"--parallel {parallel}: give at least 1.")
    limit = parse_max_failures(max_failures)
    members = group_members(config, group)
    if config.groups[group].kind == "schemas" and parallel > 1:
        # One database has one deployer lock: a second tenant at once would only be refused at it.
        progress(f"group '{group}' is a schema per tenant in one database: one tenant at a time "
                 f"(--parallel {parallel} ignored; the database's deployer lock admits one run)")
        parallel = 1
    planned = plan_waves(members, waves)
    _wanted_values(config, runbook, parameters)  # bad -p values are refused before anything runs
    done_before = _done_before(config, runbook, {m.target for m in members}, parameters)
    started_at = datetime.now(UTC)
    fleet_id = records.new_run_id(f"fleet-{runbook}", group, started_at)
    outcomes: dict[str, TargetOutcome] = {}
    tally = _Tally(len(members), parallel)
    for member in members:
        if member.target in done_before:
            run_dir = done_before[member.target]
            predicate = json.loads((run_dir / records.STATEMENT_FILE).read_bytes())["predicate"]
            outcomes[member.target] = TargetOutcome(
                member.target, _wave_of(planned, member), SKIPPED, run_dir.name, str(run_dir),
                records.statement_sha256(run_dir), predicate.get("heads_before") or {},
                predicate.get("heads_after") or {})
            tally.skipped += 1
            progress(f"skip  {member.target}: already {SUCCEEDED} in run {run_dir.name} | {tally}")
    stopped: str | None = None
    context = multiprocessing.get_context("spawn")
    with signals_deferred() as received, \
            cf.ProcessPoolExecutor(max_workers=parallel, mp_context=context, initializer=_warm_worker,
                                   initargs=(context.Barrier(parallel),)) as pool:
        # One task per slot that waits for all slots: every worker starts (and warms up) now, side by side,
        # not one by one as the first wave's targets would start them.
        for _ in range(parallel):
            pool.submit(_meet)
        for number, wave in enumerate(planned, start=1):
            todo = [m for m in wave if m.target not in outcomes]
            allowed = 0 if number == 1 else limit(len(wave))
            failures = _run_wave(pool, config, runbook, parameters, number, todo, parallel, allowed, outcomes,
                                 tally, progress, received)
            if received:
                stopped = f"stopped by {signal.Signals(received[0]).name} during wave {number}"
                break
            if number == 1 and failures:
                stopped = f"the canary wave failed on {failures} of {len(wave)} target(s)"
                break
            if failures > allowed:
                stopped = f"wave {number} had {failures} failure(s) of {len(wave)}, over the limit of {allowed}"
                break
    result = FleetResult(
        fleet_id, runbook, group,
        tuple(tuple(outcomes.get(m.target) or TargetOutcome(m.target, n, NOT_STARTED) for m in wave)
              for n, wave in enumerate(planned, start=1)),
        stopped, signal=received[0] if received else None)
    if stopped:
        progress(f"fleet {fleet_id}: {stopped}; {result.count(NOT_STARTED)} target(s) not started")
    record_dir = fleet_rollup.write_rollup(config, result, parameters=parameters, waves=waves, parallel=parallel,
                                           max_failures=str(max_failures), started_at=started_at)
    progress(f"fleet {fleet_id}: roll-up record {record_dir}")
    return replace(result, record_dir=record_dir)


def _wave_of(planned: list[list[Member]], member: Member) -> int:
    return next(n for n, wave in enumerate(planned, start=1) if member in wave)


class _Tally:
    def __init__(self, total: int, parallel: int):
        self.total, self.parallel = total, parallel
        self.done = self.failed = self.skipped = 0
        self.seconds: list[float] = []

    def __str__(self) -> str:
        remaining = self.total - self.done - self.failed - self.skipped
        eta = "?"
        if self.seconds:
            eta = f"{math.ceil(sum(self.seconds) / len(self.seconds) * remaining / self.parallel)}s"
        return (f"done {self.done}, failed {self.failed}, skipped {self.skipped}, remaining {remaining}, "
                f"ETA {eta}")


def _run_wave(pool: cf.ProcessPoolExecutor, config: Config, runbook: str, parameters: dict, number: int,
              todo: list[Member], parallel: int, allowed: int, outcomes: dict, tally: _Tally,
              progress: Callable[[str], None], received: list[int]) -> int:
    """Run one wave, at most ``parallel`` at a time; stop starting targets past ``allowed`` failures."""
    failures = 0
    queue = list(todo)
    running: dict[cf.Future, Member] = {}
    while running or (queue and not received and failures <= allowed):
        while queue and len(running) < parallel and not received and failures <= allowed:
            member = queue.pop(0)
            progress(f"start {member.target} (wave {number})")
            try:
                future = pool.submit(_run_member, str(config.path), runbook, member.as_dict(), parameters)
            except cf.BrokenExecutor as err:  # a worker was killed: the pool takes no more work
                future = cf.Future()
                future.set_exception(err)
            running[future] = member
        finished, _ = cf.wait(running, timeout=0.5, return_when=cf.FIRST_COMPLETED)
        for future in finished:
            member = running.pop(future)
            try:
                facts = future.result()
            except Exception as err:  # the worker process itself died
                facts = {"outcome": "failed", "error": f"worker died: {type(err).__name__}: {err}"}
            record_dir = facts.get("record_dir")
            sealed = bool(record_dir and (Path(record_dir) / records.STATEMENT_FILE).is_file())
            outcome = TargetOutcome(
                member.target, number, facts["outcome"], facts.get("run_id"), record_dir,
                records.statement_sha256(Path(record_dir)) if sealed and record_dir else None,
                facts.get("heads_before") or {},
                facts.get("heads_after") or {}, round(float(facts.get("seconds") or 0.0), 3), facts.get("error"))
            outcomes[member.target] = outcome
            if outcome.failed:
                failures += 1
                tally.failed += 1
            else:
                tally.done += 1
            tally.seconds.append(outcome.seconds)
            detail = f" run {outcome.run_id}" if outcome.run_id else ""
            reason = f" ({outcome.error})" if outcome.error and outcome.failed else ""
            progress(f"end   {member.target}: {outcome.outcome} in {outcome.seconds:.1f}s{detail}{reason} | {tally}")
    return failures
