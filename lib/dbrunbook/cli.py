"""The ``dbrunbook`` command: each subcommand parses its arguments, makes one library call and prints.

Errors dbrunbook raises on purpose print their message (no traceback) and exit with the error's
``exit_status``: 1 a step failed, 2 bad usage or configuration, 3 stopped at a guard. ``run`` and ``seal``
exit with the run's own status.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

from dbrunbook.cli_output import parameter_values, print_err, print_result
from dbrunbook.cli_records import cmd_approve, cmd_fleet, cmd_keygen, cmd_report, cmd_verify
from dbrunbook.cli_run import cmd_lab, cmd_list, cmd_run, cmd_seal
from dbrunbook.config import load_config
from dbrunbook.errors import DbRunbookError

# jsonschema (imported by nbformat, so by papermill and the launcher) loads `rfc3987_syntax` when it is
# installed (jupyter-events pulls it in), which compiles an Earley grammar at import: 2 s on every `dbrunbook`
# command, measured with `python -X importtime`. It serves only the "iri" string formats, which the notebook
# schema does not use, so the command-line process does without it. Only here, never in the library: a
# user's own process keeps its validators. Set at import, before any command imports nbformat (the modules
# imported above do not).
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

__all__ = ["build_parser", "main"]


def cmd_open(args: argparse.Namespace) -> int:
    from dbrunbook.execution.runner import prepare_runbook

    path = prepare_runbook(args.runbook, target=args.target, parameters=parameter_values(args.parameter),
                           config=load_config(args.config))
    print(path)
    print(f"Open it with:  {_lab_command(path)}   (records under outputs/ are read-only there)")
    print(f"Save it, then seal it:  dbrunbook seal {path.parent}")
    return 0


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


#: Commands that first say when a launched run has no signed record (a killed launcher, a failed seal).
_NOTICING = ("run", "list", "verify", "seal")


def _notice_unfinished(args: argparse.Namespace) -> None:
    if args.command not in _NOTICING:
        return
    try:
        from dbrunbook.execution.unfinished import notices

        for line in notices(load_config(args.config)):
            print_err(line)
    except DbRunbookError:  # a broken config is reported by the command itself
        pass


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


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``dbrunbook`` and every subcommand, each --help ending with its examples and exit statuses."""
    parser = argparse.ArgumentParser(
        prog="dbrunbook",
        description="Run database migration runbooks (notebooks) with papermill; keep signed records.",
    )
    parser.add_argument("--config",
                        help="path of dbrunbook.toml (default: $DBRUNBOOK_CONFIG or the nearest one)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_run_commands(sub)
    _add_record_commands(sub)
    _add_project_commands(sub)
    _add_epilogs(parser)
    return parser


def _add_run_commands(sub) -> None:
    """Commands that run runbooks: run, fleet, list, open, lab, seal."""
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


def _add_record_commands(sub) -> None:
    """Commands about records: verify, report, keygen, approve."""
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


def _add_project_commands(sub) -> None:
    """Commands about the project: db, demo, new, init."""
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
        print_err(str(err))
        return err.exit_status
    except KeyboardInterrupt as err:
        result = getattr(err, "run_result", None)  # the launcher sealed the interrupted run first
        with contextlib.suppress(BrokenPipeError):
            if result is not None:
                print_result(result)
                sys.stdout.flush()
        print_err("Interrupted.")
        return 130

if __name__ == "__main__":
    sys.exit(main())
