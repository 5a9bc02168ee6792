"""The ``dbrunbook`` command: each subcommand parses its arguments, makes one library call and prints.

Errors dbrunbook raises on purpose print their message (no traceback) and exit with the error's
``exit_status``: 1 a step failed, 2 bad usage or configuration, 3 stopped at a guard. ``run`` and ``seal``
exit with the run's own status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

# jsonschema (imported by nbformat, so by papermill and the launcher) loads `rfc3987_syntax` when it is
# installed (jupyter-events pulls it in), which compiles an Earley grammar at import: 2 s on every `dbrunbook`
# command, measured with `python -X importtime`. It serves only the "iri" string formats, which the notebook
# schema does not use, so the command-line process does without it. Only here, never in the library: a
# user's own process keeps its validators.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from dbrunbook.config import load_config
from dbrunbook.errors import DbRunbookError, ParameterError
from dbrunbook.execution import protocol

__all__ = ["build_parser", "main"]


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parameters(pairs: list[list[str]] | None) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in pairs or []:
        if name in values:
            raise ParameterError(f"Parameter '{name}' is given twice (-p {name} ...); pass it once.")
        values[name] = value
    return values


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[int]:
    """Send everything written to file descriptor 1 (this process, kernels it starts) to stderr.

    Yields a duplicate of the real stdout, so ``--json`` can print exactly one object there at the end.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield saved
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _print_result(result) -> None:
    print(f"run id:     {result.run_id}")
    print(f"outcome:    {result.outcome}")
    if result.failing_step:
        step = result.failing_step
        where = step.get("heading") or f"cell {step.get('cell')}"
        what = " ".join(str(step[k]) for k in ("ename", "evalue") if step.get(k))
        print(f"stopped at: {where}: {what}")
    print(f"record:     {result.record_dir}")
    if not getattr(result, "sealed", True):
        print(f"NOT SEALED: {result.seal_error}")
        print(f"finish it:  dbrunbook seal {result.record_dir}")


# --- commands ---------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import run_runbook

    def run():
        return run_runbook(args.runbook, target=args.target, parameters=_parameters(args.parameter),
                           config=load_config(args.config), progress=_err,
                           execution_timeout=args.execution_timeout)

    previous = _sigterm_as_exit()
    try:
        if not args.json:
            result = run()
            _print_result(result)
            return result.exit_status
        with _stdout_to_stderr() as real_stdout:
            document = _run_document(run)
            os.write(real_stdout, (json.dumps(document, sort_keys=True, default=str) + "\n").encode("utf-8"))
        return document["exit_status"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_exit():
    """SIGTERM ends ``run`` as SystemExit(143) (the launcher seals what exists first); returns the old handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, handler)


def _run_document(run) -> dict:
    """The one JSON object ``run --json`` prints, whatever happened: a result, an error, or a signal."""
    from dbrunbook.execution.parameters import mask_secrets

    try:
        return run().as_json()
    except DbRunbookError as err:
        _err(str(err))
        return {"error": str(err), "error_type": type(err).__name__, "exit_status": err.exit_status}
    except (KeyboardInterrupt, SystemExit) as err:
        status = 130 if isinstance(err, KeyboardInterrupt) else (err.code if isinstance(err.code, int) else 1)
        result = getattr(err, "run_result", None)
        document = result.as_json() if result is not None else {
            "error": "interrupted before the run's notebook started: nothing was changed", "error_type": type(err).__name__}
        document.update(interrupted=type(err).__name__, exit_status=status)
        _err("Interrupted." if status == 130 else f"Terminated (exit {status}).")
        return document
    except Exception as err:  # noqa: BLE001 - one object for every outcome, a bug included
        import traceback

        _err(mask_secrets("".join(traceback.format_exception(err))).rstrip())  # for the bug report, no secret
        message = mask_secrets(f"{type(err).__name__}: {err}")
        return {"error": f"unexpected error: {message}", "error_type": type(err).__name__, "exit_status": 1}


def cmd_list(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import list_runbooks

    runbooks = list_runbooks(load_config(args.config))
    if not runbooks:
        print("No runbooks found.")
        return 0
    print(_table([{"runbook": r.name, "changes database": "yes" if r.changes_database else "no",
                   "title": r.title} for r in runbooks], ["runbook", "changes database", "title"]))
    for r in runbooks:
        print(f"\n{r.name}: {r.description}".rstrip())
        rows = [{"parameter": p.name, "type": p.type, "default": repr(p.default), "help": p.help}
                for p in r.operator_parameters]
        if rows:
            print("  " + _table(rows, ["parameter", "type", "default", "help"]).replace("\n", "\n  "))
    return 0


def cmd_open(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import prepare_runbook

    path = prepare_runbook(args.runbook, target=args.target, parameters=_parameters(args.parameter),
                           config=load_config(args.config))
    print(path)
    print(f"Open it with:  {_lab_command(path)}   (records under outputs/ are read-only there)")
    print(f"Save it, then seal it:  dbrunbook seal {path.parent}")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    import subprocess

    from dbrunbook.execution.interactive import lab_command

    argv, env = lab_command(load_config(args.config), args.jupyter_args)
    return subprocess.call(argv, env=env)


def _lab_command(path: Path) -> str:
    """The command that opens ``path`` in JupyterLab from this project: ``dbrunbook lab`` when this dbrunbook has
    it, else this environment's own ``jupyter`` by absolute path (a bare ``jupyter`` may be another one or none)."""
    if "lab" in _subcommands(build_parser()):
        return f"dbrunbook lab {path}"
    here = Path(sys.executable).parent / "jupyter"
    return f"{here if here.is_file() else 'jupyter'} lab {path}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cmd_seal(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import seal

    result = seal(Path(args.run_dir), config=load_config(args.config))
    _print_result(result)
    return result.exit_status


#: Commands that first say when a launched run has no signed record (a killed launcher, a failed seal).
_NOTICING = ("run", "list", "verify", "seal")


def _notice_unfinished(args: argparse.Namespace) -> None:
    if args.command not in _NOTICING:
        return
    try:
        from dbrunbook.execution.unfinished import notices

        for line in notices(load_config(args.config)):
            _err(line)
    except DbRunbookError:  # a broken config is reported by the command itself
        pass


def _run_dirs(path: Path) -> list[Path]:
    from dbrunbook import records

    markers = (protocol.STATEMENT_FILE, protocol.INTENT_FILE, protocol.NOTEBOOK_FILE)
    if any((path / m).is_file() for m in markers):
        return [path]
    return records.find_records(path)


def cmd_verify(args: argparse.Namespace) -> int:
    from dbrunbook import records
    from dbrunbook.postgres import db
    from dbrunbook.records import archive

    config = load_config(args.config)
    # The default outputs/ not existing yet just means no runs; a folder the user named must exist.
    missing = [str(p) for p in args.paths if not Path(p).is_dir()]
    if missing:
        _err(f"Not a folder: {', '.join(missing)}. Pass run directories or folders that contain them.")
        return 2
    paths = [Path(p) for p in args.paths] or [config.outputs_dir]
    status, paths = _verify_fleets(config, paths)
    single = [p for p in paths if records.is_run_dir(p)]
    folders = [p for p in paths if p not in single]
    if single:  # run directories named one by one: each record on its own, no chain to follow
        checks = [records.verify_record(d, config.allowed_signers) for d in single]
        print(_table([{"run id": c.run_id, "status": c.status, "principal": c.principal or "-",
                       "problems": "; ".join(c.problems)} for c in checks],
                     ["run id", "status", "principal", "problems"]))
        bad = [c for c in checks if not c.ok]
        print(f"\n{len(checks) - len(bad)} of {len(checks)} records valid.")
        status = 1 if bad else 0
    engines = {}
    try:
        for name in args.target or []:
            _target, engines[name] = db.connect_target(config, name)
        for folder in folders:
            report = archive.verify_archive(folder, config.allowed_signers, engines,
                                            migration_sets=config.migration_sets.values() if engines else ())
            if not report.checks and not report.findings:
                print(f"No run records under {folder}.")
                continue
            if report.checks:
                print(_table(report.rows(), ["run_id", "database", "runbook", "status", "chain", "problems"]))
            for finding in report.orphan_findings():
                print(f"{finding.kind}: {finding.message}")
            print(f"\n{report.summary()}")
            status = max(status, report.exit_status)
    finally:
        for engine in engines.values():
            engine.dispose()
    return status


def cmd_report(args: argparse.Namespace) -> int:
    from dbrunbook.views.report import build_report

    config = load_config(args.config)
    built = build_report(config.outputs_dir, config.allowed_signers, Path(args.out) if args.out else None)
    bad = sum(1 for e in built.entries if e.status != "valid")
    print(f"{built.index}  ({len(built.entries)} records, {bad} not valid)")
    if args.open:
        import webbrowser

        webbrowser.open(built.index.resolve().as_uri())
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from dbrunbook import records
    from dbrunbook.records import signing, trust

    config = load_config(args.config)
    key = trust.operator_key_path(config)
    if args.force and key.exists():
        # Moved aside, never deleted: records it signed still verify (its key stays in allowed_signers).
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for old in (key, key.with_name(key.name + ".pub")):
            if old.exists():
                old.rename(old.with_name(f"{old.name}.replaced-{stamp}"))
        print(f"Moved the old key aside: {key}.replaced-{stamp}")
    if key.exists():
        print(f"Signing key {key} exists already; pass --force to replace it.")
        if args.trust:
            principal = trust.principal_for(records.operator_identity())
            signing.add_allowed_signer(config.allowed_signers, principal, signing.public_key_line(key))
            print(f"Trusted it as {principal} in {config.allowed_signers}.")
        return 0
    path, line = trust.create_operator_key(config.keys_dir,
                                           allowed_signers=config.allowed_signers if args.trust else None)
    print(f"Created signing key {path} (public key {path}.pub).")
    if args.trust:
        print(f"Trusted it in {config.allowed_signers}:\n  {line}")
    else:
        print(f"Runs refuse to start until the team trusts it: add this line to {config.allowed_signers} "
              f"(reviewed like code), or run 'dbrunbook keygen --trust' on a machine of your own:\n  {line}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from dbrunbook.safety.approvals import approve

    path = approve(load_config(args.config), args.run_id, note=args.note or "",
                   key_path=Path(args.key) if args.key else None)
    print(f"Approved {args.run_id}: {path} (signed, with {path.name}.sig)")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from dbrunbook.postgres.db import mask_url
    from dbrunbook.postgres.embedded import EmbeddedServer

    server = EmbeddedServer.for_config(load_config(args.config))
    if args.action == "start":
        print(f"Embedded PostgreSQL is running: {mask_url(server.ensure_started())}")
    elif args.action == "stop":
        print("Embedded PostgreSQL stopped." if server.stop() else "Embedded PostgreSQL was not running.")
    elif args.action == "status":
        status = server.status()
        for name, value in status.as_dict().items():
            print(f"{name + ':':<12}{mask_url(value) if name == 'url' else value}")
        return 0 if status.running else 1
    else:  # url: libpq spelling, for psql and other clients
        print(mask_url(server.url()).replace("postgresql+psycopg://", "postgresql://", 1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dbrunbook.demo import run_demo

    results = run_demo(load_config(args.config))
    return max((r.exit_status for r in results), default=0)


# --- parser -----------------------------------------------------------------------------------------------
def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runbook", help="runbook name (a notebook under runbooks/, without .ipynb)")
    parser.add_argument("-t", "--target",
                        help="database target from dbrunbook.toml (default: its default_target)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                        help="set a runbook parameter (repeatable); see 'dbrunbook list'")

def cmd_new(args: argparse.Namespace) -> int:
    from dbrunbook.procedures.authoring import merge_heads, new_revision

    config = load_config(args.config)
    if args.merge:
        path = merge_heads(config, args.migration_set, args.message)
    else:
        path = new_revision(config, args.message, args.migration_set, autogenerate=args.autogenerate,
                            target=args.target)
    print(path)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from dbrunbook.chain.project_init import write_config

    path = write_config([Path(p) for p in args.alembic_ini], Path(args.output) if args.output else None)
    print(f"Wrote {path}. Check it, then: dbrunbook list; dbrunbook run status")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from dbrunbook.procedures.fleet import run_fleet

    result = run_fleet(args.runbook, args.group, parameters=_parameters(args.parameter), waves=args.waves,
                       parallel=args.parallel, max_failures=args.max_failures, config=load_config(args.config),
                       progress=_err)
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True, default=str))
        return result.exit_status
    rows = [{"wave": o.wave, "target": o.target, "outcome": o.outcome, "run id": o.run_id or "-",
             "seconds": f"{o.seconds:.1f}"} for o in result.outcomes]
    print(_table(rows, ["wave", "target", "outcome", "run id", "seconds"]))
    print(f"\nfleet {result.fleet_id}: {result.stopped or 'every target ran'}; roll-up {result.record_dir}")
    return result.exit_status


def _verify_fleets(config, paths: list[Path]) -> tuple[int, list[Path]]:
    """Check the fleet roll-ups among ``paths`` (or under them); returns a status and the other paths."""
    from dbrunbook.procedures import fleet_rollup

    checks = fleet_rollup.verify_rollups(paths, config.allowed_signers)
    if checks:
        print(_table([{"fleet id": c.fleet_id, "status": c.status, "problems": "; ".join(c.problems)}
                      for c in checks], ["fleet id", "status", "problems"]))
        print(f"\n{sum(c.ok for c in checks)} of {len(checks)} fleet roll-ups valid.\n")
    return (1 if any(not c.ok for c in checks) else 0), [p for p in paths if not fleet_rollup.is_rollup_dir(p)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dbrunbook",
        description="Run database migration runbooks (notebooks) with papermill; keep signed records.",
    )
    parser.add_argument("--config",
                        help="path of dbrunbook.toml (default: $DBRUNBOOK_CONFIG or the nearest one)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a runbook and sign its record")
    _add_run_options(run)
    run.add_argument("--json", action="store_true",
                     help="print one JSON object on stdout, everything else on stderr")
    run.add_argument("--execution-timeout", type=float, metavar="SECONDS",
                     help="fail the run when one cell runs longer than this")
    run.set_defaults(func=cmd_run)

    fleet = sub.add_parser("fleet", help="run a runbook on every target of a group, in waves (README, 'Fleets')")
    fleet.add_argument("runbook", metavar="RUNBOOK", help="runbook name, as for run (dbrunbook list)")
    fleet.add_argument("-g", "--group", required=True, help="[groups.NAME] of dbrunbook.toml")
    fleet.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="runbook parameter for every target (repeatable)")
    fleet.add_argument("--waves", default="1,rest", help="wave sizes: counts, percentages, rest (default 1,rest)")
    fleet.add_argument("--parallel", type=int, default=1, help="targets run at once within a wave (default 1)")
    fleet.add_argument("--max-failures", default="0", metavar="K|P%",
                       help="failures a wave after the canary may have before the fleet stops (default 0)")
    fleet.add_argument("--json", action="store_true", help="print the fleet's result as one JSON object")
    fleet.set_defaults(func=cmd_fleet)

    sub.add_parser("list", help="list runbooks and their parameters").set_defaults(func=cmd_list)

    open_ = sub.add_parser("open", help="prepare a run directory to run a runbook in JupyterLab")
    _add_run_options(open_)
    open_.set_defaults(func=cmd_open)

    lab = sub.add_parser("lab", help="start JupyterLab on the project with the records folder read-only")
    lab.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="passed on to jupyter lab")
    lab.set_defaults(func=cmd_lab)

    seal_ = sub.add_parser("seal", help="sign a run directory made by 'open' once its cells have run")
    seal_.add_argument("run_dir", metavar="RUN_DIR",
                       help="the run directory 'dbrunbook open' printed (outputs/<runbook>/<run id>)")
    seal_.set_defaults(func=cmd_seal)

    verify = sub.add_parser("verify", help="check the signatures and digests of run records")
    verify.add_argument("paths", nargs="*", metavar="PATH",
                        help="run directories or folders of them (default: outputs/)")
    verify.add_argument("-t", "--target", action="append", metavar="TARGET",
                        help="also cross-check this target's ledger and current heads (repeatable)")
    verify.set_defaults(func=cmd_verify)

    report_ = sub.add_parser("report", help="write the HTML archive of the records (index and one page each)")
    report_.add_argument("--out", metavar="DIR", help="where to write it (default: outputs/report)")
    report_.add_argument("--open", action="store_true", help="open the index in a web browser")
    report_.set_defaults(func=cmd_report)

    keygen = sub.add_parser("keygen", help="create the operator's signing key")
    keygen.add_argument("--trust", action="store_true",
                        help="also add the key to the project's allowed_signers (a demo or your own laptop)")
    keygen.add_argument("--force", action="store_true",
                        help="move the existing key aside and create a new one")
    keygen.set_defaults(func=cmd_keygen)

    approve_ = sub.add_parser("approve", help="sign your approval of a preview record (four eyes on protected "
                                              "targets)")
    approve_.add_argument("run_id", metavar="RUN_ID", help="run id of the preview record you reviewed")
    approve_.add_argument("--note", help="what you checked, kept in the approval")
    approve_.add_argument("--key", help="your signing key (default: keys_dir/operator_ed25519)")
    approve_.set_defaults(func=cmd_approve)

    db_ = sub.add_parser("db", help="the embedded PostgreSQL of this project",
                         description="Start, stop or inspect the embedded PostgreSQL server of this project "
                                     "(targets with embedded = true); its data lives under the project.")
    db_.add_argument("action", choices=["start", "stop", "status", "url"],
                     help="start it (if needed) and print its URL; stop it; status (exit 1 when it is not "
                          "running); url: the libpq URL for psql, password masked")
    db_.set_defaults(func=cmd_db)

    demo = sub.add_parser("demo", help="deploy the sample migrations on the embedded database, with records")
    demo.set_defaults(func=cmd_demo)
    new = sub.add_parser("new", help="create a migration (alembic revision) once its message is descriptive")
    new.add_argument("message", help='what the migration changes, e.g. "Add user preferences table"')
    new.add_argument("-m", "--migration-set", dest="migration_set", default="main",
                     help="migration set from dbrunbook.toml (default: main)")
    kind = new.add_mutually_exclusive_group()
    kind.add_argument("--autogenerate", action="store_true",
                      help="write the operations found by comparing the models with the target database")
    kind.add_argument("--merge", action="store_true", help="write a merge revision of the set's heads")
    new.add_argument("-t", "--target", help="database --autogenerate compares with (default: default_target)")
    new.set_defaults(func=cmd_new)

    init = sub.add_parser("init", help="write a commented dbrunbook.toml for an existing Alembic project")
    init.add_argument("alembic_ini", nargs="*", metavar="ALEMBIC_INI",
                      help="the project's alembic.ini files (or pyproject.toml); default: ./alembic.ini")
    init.add_argument("-o", "--output", help="where to write it (default: ./dbrunbook.toml; never overwritten)")
    init.set_defaults(func=cmd_init)

    _add_epilogs(parser)
    return parser


EXIT_STATUSES = """exit statuses:
  0    succeeded
  1    a step failed, a run is incomplete or interrupted, or a record is not valid
  2    bad usage or configuration (nothing was changed)
  3    stopped at a guard (the runbook refused to go on; nothing past the guard was changed)
  130  interrupted (Ctrl-C), after the run's record is signed"""

#: One or two example command lines per subcommand (its --help shows them).
EXAMPLES = {
    None: ["dbrunbook list", "dbrunbook run status -t staging",
           "dbrunbook run apply -t staging -p migration_set main -p dry_run false"],
    "run": ["dbrunbook run status -t staging",
            "dbrunbook run apply -t staging -p migration_set main -p dry_run false --json"],
    "list": ["dbrunbook list"],
    "open": ["dbrunbook open apply -t local -p migration_set main -p dry_run false"],
    "seal": ["dbrunbook seal outputs/apply/20261201T101500Z-1a2b3c"],
    "verify": ["dbrunbook verify", "dbrunbook verify outputs/apply -t staging"],
    "report": ["dbrunbook report --open"],
    "keygen": ["dbrunbook keygen"],
    "db": ["dbrunbook db start", "dbrunbook db status | head -2", "psql \"$(dbrunbook db url)\""],
    "demo": ["dbrunbook demo"],
    "new": ['dbrunbook new "Add user preferences table" -m main',
            "dbrunbook new --merge \"Merge the ai heads\" -m ai"],
    "init": ["dbrunbook init alembic.ini", "dbrunbook init services/*/alembic.ini -o dbrunbook.toml"],
}


def _add_epilogs(parser: argparse.ArgumentParser) -> None:
    """Every --help ends with its examples and the exit statuses (kept verbatim: RawDescriptionHelpFormatter)."""
    for name, command in [(None, parser), *_subcommands(parser).items()]:
        examples = EXAMPLES.get(name, [])
        text = ("examples:\n" + "".join(f"  {line}\n" for line in examples) + "\n") if examples else ""
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = text + EXIT_STATUSES


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dbrunbook`` console script; returns the exit status."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (dbrunbook db status | head -2): stop quietly, like any Unix tool. stdout is
        # pointed at /dev/null so the interpreter's final flush cannot raise again.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage, 0 on --help
        sys.stdout.flush()
        return int(exit_.code or 0)
    try:
        _notice_unfinished(args)
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit: a closed pipe is then handled in main()
        return status
    except DbRunbookError as err:
        _err(str(err))
        return err.exit_status
    except KeyboardInterrupt as err:
        result = getattr(err, "run_result", None)  # the launcher sealed the interrupted run first
        with contextlib.suppress(BrokenPipeError):
            if result is not None:
                _print_result(result)
                sys.stdout.flush()
        _err("Interrupted.")
        return 130

if __name__ == "__main__":
    sys.exit(main())
