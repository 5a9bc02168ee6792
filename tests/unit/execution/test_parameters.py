"""Runbook parameters: read from the ``parameters`` cell with ast, validated before anything runs."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from dbrunbook.errors import ParameterError, RunbookNotFound
from dbrunbook.execution.runner import (
    Parameter,
    find_runbook,
    list_runbooks,
    mask_secrets,
    parse_parameters,
    read_parameters,
    validate_parameters,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "notebooks"

SOURCE = '''\
target: str = "local"  # database target from dbrunbook.toml
revision: str = "heads"  # Alembic revision to go to
label: str = "0001"
retries: int = 3  # how many times
ratio: float = 1  # a fraction
dry_run: bool = True  # show what would change without changing it
untyped = "x"
run_id: str = ""  # set by the launcher
record_dir: str = ""
'''


@pytest.fixture
def info():
    """RunbookInfo of a runbook whose parameters cell is SOURCE."""
    from dbrunbook.execution.runner import RunbookInfo

    return RunbookInfo(name="apply", path=Path("apply.ipynb"), title="Apply", description="",
                       changes_database=True, parameters=parse_parameters(SOURCE))


def test_parse_reads_names_types_defaults_and_help():
    params = {p.name: p for p in parse_parameters(SOURCE)}
    assert params["target"] == Parameter("target", "str", "local", "database target from dbrunbook.toml")
    assert params["label"] == Parameter("label", "str", "0001", "")
    assert params["retries"] == Parameter("retries", "int", 3, "how many times")
    assert params["ratio"] == Parameter("ratio", "float", 1.0, "a fraction")
    assert type(params["ratio"].default) is float
    assert params["dry_run"] == Parameter("dry_run", "bool", True,
                                          "show what would change without changing it")
    assert params["untyped"] == Parameter("untyped", "str", "x", "")
    assert [p.name for p in parse_parameters(SOURCE)][-2:] == ["run_id", "record_dir"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("import os", "'import os' is not a parameter"),
        ("items: list = []", "parameter 'items' has type 'list'; use one of str, int, float, bool"),
        ("when: str = str(1)", "the default of 'when' must be a literal, not 'str(1)'"),
        ("count: int = 'three'", "the default of 'count' is 'three', not an int"),
        ("flag: bool = 1", "the default of 'flag' is 1, not a bool"),
        ("x: str = (", "is not valid Python"),
    ],
)
def test_parse_refuses_what_the_launcher_cannot_type_check(source, message):
    with pytest.raises(ParameterError) as caught:
        parse_parameters(source, where="nb.ipynb")
    assert message in str(caught.value)
    assert str(caught.value).startswith("nb.ipynb")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"label": "0012"}, {"label": "0012"}),  # papermill's own -p would make it 12
        ({"revision": "1e5"}, {"revision": "1e5"}),
        ({"retries": "7"}, {"retries": 7}),
        ({"retries": " 7 "}, {"retries": 7}),
        ({"ratio": "0.25"}, {"ratio": 0.25}),
        ({"ratio": 2}, {"ratio": 2.0}),
        ({"retries": 4}, {"retries": 4}),
        ({"dry_run": False}, {"dry_run": False}),
        *[({"dry_run": word}, {"dry_run": True}) for word in ("true", "TRUE", "yes", "1", "on", "On")],
        *[({"dry_run": word}, {"dry_run": False}) for word in ("false", "False", "no", "0", "off", "OFF")],
    ],
)
def test_validate_converts_to_the_declared_type(info, raw, expected):
    values = validate_parameters(info, raw)
    for name, value in expected.items():
        assert values[name] == value
        assert type(values[name]) is type(value)


def test_validate_keeps_defaults_and_leaves_out_launcher_parameters(info):
    values = validate_parameters(info, {"target": "staging"})
    assert values == {"target": "staging", "revision": "heads", "label": "0001", "retries": 3, "ratio": 1.0,
                      "dry_run": True, "untyped": "x"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"revison": "head"},
         "Runbook 'apply' has no parameter 'revison'; its parameters are: target, revision, label, retries, "
         "ratio, dry_run, untyped."),
        ({"run_id": "x"}, "Parameter 'run_id' of runbook 'apply' is set by the launcher for every run; "
                          "remove -p run_id."),
        ({"record_dir": "/tmp"}, "Parameter 'record_dir' of runbook 'apply' is set by the launcher"),
        ({"db_password": "x"}, "Parameter name 'db_password' looks like a secret"),
        ({"API_TOKEN": "x"}, "Parameter name 'API_TOKEN' looks like a secret"),
        ({"dsn": "x"}, "Parameter name 'dsn' looks like a secret"),
        ({"revision": "postgresql://app:hunter2@db/app"},
         "The value of parameter 'revision' holds a password (postgresql://app:***@db/app)"),
        ({"label": "host=db password=hunter2"}, "The value of parameter 'label' holds a password"),
        ({"dry_run": "maybe"}, "Parameter 'dry_run' of runbook 'apply' is a bool; 'maybe' is not one. "
                               "Use true/false, yes/no, on/off or 1/0."),
        ({"retries": "3.5"}, "Parameter 'retries' of runbook 'apply' is an int; '3.5' is not one."),
        ({"ratio": "half"}, "Parameter 'ratio' of runbook 'apply' is a float; 'half' is not one."),
        ({"retries": True}, "Parameter 'retries' of runbook 'apply' is an int; got True (bool)."),
    ],
)
def test_validate_refuses(info, raw, message):
    with pytest.raises(ParameterError) as caught:
        validate_parameters(info, raw)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert caught.value.exit_status == 2


def test_secret_advice_names_the_safe_places(info):
    with pytest.raises(ParameterError) as caught:
        validate_parameters(info, {"password": "x"})
    assert "~/.pgpass" in str(caught.value) and "url_env" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("postgresql+psycopg://postgres:***@127.0.0.1/x", "postgresql+psycopg://postgres:***@127.0.0.1/x"),
        ("postgresql://u:p/w@h/d", "postgresql://u:***@h/d"),
        ("at postgresql://app@db/app: refused", "at postgresql://app@db/app: refused"),
        ("host=db password='a b' user=x", "host=db password=*** user=x"),
    ],
)
def test_mask_secrets(text, masked):
    assert mask_secrets(text) == masked


def test_read_parameters_of_a_fixture_notebook():
    params = read_parameters(FIXTURES / "succeeds.ipynb")
    assert [(p.name, p.type, p.default) for p in params] == [
        ("target", "str", "local"), ("run_id", "str", ""), ("record_dir", "str", ""),
        ("label", "str", "0001"), ("count", "int", 1), ("ratio", "float", 0.5), ("dry_run", "bool", False),
    ]


def test_read_parameters_without_a_parameters_cell(tmp_path):
    path = tmp_path / "bare.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), path)
    assert read_parameters(path) == ()


class _Config:
    """The one attribute list_runbooks and find_runbook read."""

    def __init__(self, runbooks_dir: Path):
        self.runbooks_dir = runbooks_dir


def test_list_and_find_runbooks(tmp_path):
    book = new_notebook(
        cells=[new_markdown_cell("# Apply a revision\n\nBrings one migration set to a revision.\n\nMore."),
               new_code_cell('target: str = "local"  # where', metadata={"tags": ["parameters"]}),
               new_markdown_cell("## 1. Connect")],
        metadata={"dbrunbook": {"changes_database": True, "title": "ignored when there is a heading"}},
    )
    nbformat.write(book, tmp_path / "apply.ipynb")
    nbformat.write(new_notebook(cells=[], metadata={"dbrunbook": {"title": "From metadata"}}),
                   tmp_path / "status.ipynb")
    (tmp_path / "_draft.ipynb").write_text("not even json")
    config = _Config(tmp_path)

    found = list_runbooks(config)
    assert [(r.name, r.title, r.changes_database) for r in found] == [
        ("apply", "Apply a revision", True), ("status", "From metadata", False)]
    assert found[0].description == "Brings one migration set to a revision."
    assert found[0].parameters == (Parameter("target", "str", "local", "where"),)
    assert find_runbook(config, "apply.ipynb") == found[0]

    with pytest.raises(RunbookNotFound) as caught:
        find_runbook(config, "aply")
    assert str(caught.value) == ("Unknown runbook 'aply'; known runbooks: apply, status. "
                                 "Run 'dbrunbook list' to see them.")
    assert caught.value.exit_status == 2
