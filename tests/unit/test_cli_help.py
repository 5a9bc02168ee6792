"""Every --help says how the command exits and shows an example; a closed pipe ends a command quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dbrunbook import cli

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(cli._subcommands(cli.build_parser()))


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_every_help_lists_the_exit_statuses(name):
    parser = cli.build_parser()
    command = parser if name is None else cli._subcommands(parser)[name]
    text = command.format_help()
    assert "exit statuses:\n  0    succeeded\n" in text
    for status in ("  1    a step failed", "  2    bad usage or configuration", "  3    stopped at a guard",
                   "  130  interrupted"):
        assert status in text


@pytest.mark.parametrize("name", [None, *sorted(k for k in cli.EXAMPLES if k)])
def test_help_shows_examples_that_name_its_command(name):
    parser = cli.build_parser()
    command = parser if name is None else cli._subcommands(parser)[name]
    text = command.format_help()
    examples = text.split("examples:\n")[1].split("\n\n")[0].splitlines()
    assert examples and all(line.startswith("  ") for line in examples)
    if name is not None:
        assert any(f"dbrunbook {name}" in line for line in examples)


def test_every_command_of_this_dbrunbook_has_examples():
    assert sorted(k for k in cli.EXAMPLES if k) == [c for c in COMMANDS if c in cli.EXAMPLES]
    assert set(COMMANDS) - set(cli.EXAMPLES) <= {"lab", "approve", "fleet"}  # added by other branches


def test_seal_and_db_explain_their_arguments():
    commands = cli._subcommands(cli.build_parser())
    assert "the run directory 'dbrunbook open' printed" in " ".join(commands["seal"].format_help().split())
    db_help = " ".join(commands["db"].format_help().split())
    assert "Start, stop or inspect the embedded PostgreSQL server" in db_help
    assert "status (exit 1 when it is not running)" in db_help


def test_open_prints_the_lab_command_that_works_from_the_project():
    assert "lab" in COMMANDS
    assert cli._lab_command(Path("/x/outputs/run/notebook.ipynb")) == "dbrunbook lab /x/outputs/run/notebook.ipynb"


@pytest.mark.parametrize(("argv", "status"), [
    (["--help"], 0),  # argparse itself ignores a failed write of the help
    (["--config", str(ROOT / "dbrunbook.toml"), "list"], 141),  # 128 + SIGPIPE, as a shell shows a killed writer
])
def test_a_closed_pipe_ends_the_command_without_a_traceback(argv, status):
    proc = subprocess.Popen([sys.executable, "-m", "dbrunbook.cli", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line (as `| head -0` would)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == status
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
