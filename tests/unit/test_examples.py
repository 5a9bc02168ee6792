"""The scheduling examples (examples/): cron lines, systemd units and the Airflow DAG stay runnable.

Each command an example runs is parsed by dbrunbook's own CLI parser, and each runbook and parameter it names
is checked against the runbooks in runbooks/ and the targets in dbrunbook.toml, so renaming a runbook or a
parameter breaks this test rather than a night's schedule. Airflow is not installed here (it runs in
bench/airflow_example.py); its files are compiled and read with ast.
"""

from __future__ import annotations

import ast
import py_compile
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from dbrunbook import protocol
from dbrunbook.cli import build_parser
from dbrunbook.config import load_config
from dbrunbook.execution.parameters import find_runbook, read_parameters, validate_parameters
from tests.tools import needs_tool

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRON = EXAMPLES / "cron" / "dbrunbook.cron"
SERVICE = EXAMPLES / "systemd" / "dbrunbook-verify.service"
TIMER = EXAMPLES / "systemd" / "dbrunbook-verify.timer"
DAG = EXAMPLES / "airflow" / "dags" / "dbrunbook_dag.py"
OPERATOR = EXAMPLES / "airflow" / "plugins" / "dbrunbook_operator.py"

# minute, hour, day of month, month, day of week (0 and 7 are Sunday)
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "dbrunbook.toml")


def dbrunbook_argv(command: str) -> list[str]:
    """The arguments after the dbrunbook executable in a shell command, up to the first redirection."""
    words = shlex.split(command)
    start = next(i for i, word in enumerate(words) if Path(word).name == "dbrunbook")
    argv = []
    for word in words[start + 1:]:
        if word in {">", ">>", "2>", "2>>", "|", "||", "&&", ";"} or word.startswith((">", "2>")):
            break
        argv.append(word)
    return argv


def check_run_command(argv: list[str], config) -> None:
    """``dbrunbook run RUNBOOK -t TARGET [-p ...] --json`` that the CLI accepts, on a real runbook and target."""
    args = build_parser().parse_args(argv)
    assert args.command == "run"
    assert args.json is True, f"{argv}: a scheduler needs --json (one JSON object on stdout)"
    info = find_runbook(config, args.runbook)
    assert config.target(args.target).name == args.target
    validate_parameters(info, dict(args.parameter or []))


# --- cron -------------------------------------------------------------------------------------------------
def cron_entries() -> list[tuple[list[str], str]]:
    entries = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            continue
        *fields, command = line.split(None, 5)
        entries.append((fields, command))
    return entries


def test_cron_has_a_nightly_verify_and_a_weekly_status():
    runbooks = [dbrunbook_argv(command)[1] for _fields, command in cron_entries()]
    assert runbooks == ["verify", "status"]
    fields = [f for f, _ in cron_entries()]
    assert fields[0][2:] == ["*", "*", "*"]  # every day
    assert fields[1][4] == "1"  # Mondays


def test_cron_fields_are_in_range():
    for fields, _command in cron_entries():
        assert len(fields) == 5
        for field, (low, high) in zip(fields, CRON_RANGES, strict=True):
            for part in field.split(","):
                match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
                assert match, f"cron field {field!r}"
                numbers = [int(n) for n in match.groups()[1:3] if n is not None]
                assert all(low <= n <= high for n in numbers), f"cron field {field!r} outside {low}-{high}"


def test_cron_commands_run_real_runbooks_with_json(config):
    for _fields, command in cron_entries():
        assert "%" not in command  # cron turns % into a newline
        check_run_command(dbrunbook_argv(command), config)
        assert ". /etc/dbrunbook/production.env" in command
    # The env file the lines source defines the variable the production target reads.
    assert config.target("production").url_env == "PRODUCTION_DATABASE_URL"
    assert "#   PRODUCTION_DATABASE_URL=postgresql://dbrunbook@" in CRON.read_text()


# --- systemd ----------------------------------------------------------------------------------------------
def unit_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values]}}``; systemd allows a key more than once (Environment=), so lists."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_service_is_a_oneshot_json_run_with_its_environment(config):
    service = unit_file(SERVICE)["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["WorkingDirectory"] == ["/srv/app"]
    assert service["EnvironmentFile"] == ["/etc/dbrunbook/production.env"]
    assert "DBRUNBOOK_CONFIG=/srv/app/dbrunbook.toml" in service["Environment"]
    (exec_start,) = service["ExecStart"]
    assert exec_start.startswith("/srv/app/.venv/bin/dbrunbook ")
    check_run_command(dbrunbook_argv(exec_start), config)
    assert service["StandardOutput"] == ["append:/var/log/dbrunbook/runs.jsonl"]


def test_timer_starts_the_service_nightly_and_catches_up():
    timer = unit_file(TIMER)
    assert timer["Timer"]["OnCalendar"] == ["*-*-* 02:30:00"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["Unit"] == [SERVICE.name]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


@needs_tool("systemd-analyze", "systemd")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    # The example's venv does not exist here; point ExecStart at this one so verify checks everything else.
    for unit in (SERVICE, TIMER):
        text = unit.read_text().replace("/srv/app/.venv/bin/dbrunbook", str(ROOT / ".venv" / "bin" / "dbrunbook"))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", SERVICE.name, TIMER.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# --- Airflow ----------------------------------------------------------------------------------------------
def _literal(node: ast.AST):
    return ast.literal_eval(node)


def dag_tasks() -> list[dict]:
    """Each ``DbRunbookOperator(...)`` call of the DAG file as ``{keyword: value}`` (names as their text)."""
    tree = ast.parse(DAG.read_text())
    names = {t.id: _literal(n.value) for n in tree.body if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}

    def value(node):
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.Dict):
            return {_literal(k): value(v) for k, v in zip(node.keys, node.values, strict=True)}
        return _literal(node)

    return [{k.arg: value(k.value) for k in call.keywords} for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DbRunbookOperator"]


def dag_params() -> dict[str, object]:
    """The DAG's ``params={name: Param(default, ...)}`` as ``{name: default}``."""
    tree = ast.parse(DAG.read_text())
    dag = next(c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "DAG")
    params = next(k.value for k in dag.keywords if k.arg == "params")
    return {_literal(k): _literal(v.args[0]) for k, v in zip(params.keys, params.values, strict=True)}


def render(value: str, params: dict) -> str:
    """What Airflow's (string) Jinja rendering makes of ``{{ params.x }}``: str() of the value."""
    return re.sub(r"\{\{\s*params\.(\w+)\s*\}\}", lambda m: str(params[m.group(1)]), value)


@pytest.mark.parametrize("path", [DAG, OPERATOR], ids=lambda p: p.name)
def test_airflow_files_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_dag_runs_status_preview_deploy_verify_in_order():
    assert [t["task_id"] for t in dag_tasks()] == ["status", "preview", "deploy", "verify"]
    assert [t["runbook"] for t in dag_tasks()] == ["status", "preview", "deploy", "verify"]
    assert "status >> preview >> deploy >> verify" in DAG.read_text()


def test_dag_tasks_name_runbooks_and_parameters_that_exist():
    for task in dag_tasks():
        notebook = ROOT / "runbooks" / f"{task['runbook']}.ipynb"
        assert notebook.is_file(), task
        declared = {p.name for p in read_parameters(notebook)} - set(protocol.LAUNCHER_PARAMETERS)
        assert set(task["parameters"]) <= declared, (task["runbook"], set(task["parameters"]) - declared)
        assert "target" not in task["parameters"]  # the operator's own argument


def test_dag_params_render_to_valid_parameters_and_a_dry_run_by_default(config):
    params = dag_params()
    assert params == {"target": "staging", "migration_set": "all", "revision": "heads", "dry_run": True}
    for task in dag_tasks():
        rendered = {name: render(v, params) for name, v in task["parameters"].items()}
        values = validate_parameters(find_runbook(config, task["runbook"]), {**rendered,
                                                                             "target": render(task["target"], params)})
        assert values["target"] == "staging"
        if task["runbook"] == "deploy":
            assert rendered["dry_run"] == "True"
            assert values["dry_run"] is True
            off = render(task["parameters"]["dry_run"], {**params, "dry_run": False})
            assert validate_parameters(find_runbook(config, "deploy"), {"dry_run": off})["dry_run"] is False


def test_string_rendering_keeps_a_numeric_revision_text(config):
    # Why the DAG leaves render_template_as_native_obj off: native rendering would turn "0012" into 12.
    assert "render_template_as_native_obj=True" not in DAG.read_text()
    deploy = next(t for t in dag_tasks() if t["runbook"] == "deploy")
    revision = render(deploy["parameters"]["revision"], {**dag_params(), "revision": "0012"})
    assert validate_parameters(find_runbook(config, "deploy"), {"revision": revision})["revision"] == "0012"


def test_operator_subclasses_papermill_and_runs_the_launcher():
    tree = ast.parse(OPERATOR.read_text())
    operator = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DbRunbookOperator")
    assert [b.id for b in operator.bases] == ["PapermillOperator"]
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("airflow.providers.papermill.operators.papermill", "PapermillOperator") in imports
    assert ("dbrunbook.execution.runner", "run_runbook") in imports
    calls = {getattr(c.func, "id", getattr(c.func, "attr", "")) for c in ast.walk(operator)
             if isinstance(c, ast.Call)}
    assert {"run_runbook", "xcom_push", "AirflowException"} <= calls
    assert "execute_notebook" not in calls  # papermill only through the launcher, so the record is signed
