"""Every check completes or says why not: troubleshoot, review, `alembic check` and deploy on projects where a
check cannot run, through `dbrunbook run` on real PostgreSQL, with the database state read back with SQL.

Scenario projects (tests/fixtures/alembic_projects): `provider_style` (base downgrade keeps its tables; its
models need the host's settings), `enum_left_behind` (a downgrade leaves an enum type, the re-upgrade fails),
`branched` (a merge; downgrading the merge leaves two current revisions).
"""

from __future__ import annotations

import json
import shutil

import nbformat
import pytest
import sqlalchemy as sa

from dbrunbook import cli, records
from dbrunbook.chain import migrations
from dbrunbook.config import load_config
from dbrunbook.errors import ConfirmationRequired
from dbrunbook.procedures import checks, diagnose
from dbrunbook.procedures.diagnose import DIAGNOSIS_ARTIFACT
from dbrunbook.protocol import ARTIFACTS_DIR, NOTEBOOK_FILE
from tests.projects import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "alembic_projects"
PROVIDER_MODELS = FIXTURES / "provider_style" / "provider_models.py"
AI = ROOT / "migrations" / "ai"


def write_sets(proj, sets: dict[str, str]) -> None:
    """Replace the project's migration sets by TOML bodies: {name: 'alembic_ini = ...'}."""
    text = proj.config_path.read_text().split("[migration_sets.main]")[0]
    for name, body in sets.items():
        text += f"\n[migration_sets.{name}]\n{body}\n"
    proj.config_path.write_text(text)


def provider_and_ai(proj) -> None:
    write_sets(proj, {
        "provider": f'alembic_ini = "{FIXTURES / "provider_style" / "alembic.ini"}"\n'
                    f'models = "{PROVIDER_MODELS}:Base"',
        "ai": f'alembic_ini = "{AI / "alembic.ini"}"\nversion_table = "alembic_version_ai"\n'
              f'models = "{AI / "models.py"}:Base"',
    })


def run_json(capfd, *argv: str) -> tuple[int, dict]:
    code = cli.main(["run", *argv, "--json"])
    out, _err = capfd.readouterr()
    return code, json.loads(out)


def versions(proj, table: str = "alembic_version") -> set[str]:
    with proj.engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {table}"))}


def artifact(proj, run_id: str, name: str) -> dict:
    run_dir = records.run_dir_for(load_config(proj.config_path).outputs_dir, run_id)
    return json.loads((run_dir / ARTIFACTS_DIR / name).read_text())


def cell_text(proj, run_id: str, heading: str) -> str:
    """Everything the code cells after the markdown cell starting with ``heading`` printed or displayed."""
    run_dir = records.run_dir_for(load_config(proj.config_path).outputs_dir, run_id)
    nb = nbformat.read(run_dir / NOTEBOOK_FILE, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith(heading))
    texts = []
    for cell in nb.cells[start + 1:]:
        if cell.cell_type == "markdown":
            break
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + "".join(str(v) for v in out.get("data", {}).values()))
    return "\n".join(texts)


# --- troubleshoot ---------------------------------------------------------------------------------------
def test_troubleshoot_reports_the_check_that_could_not_run_and_runs_the_others(project, capfd, monkeypatch):
    monkeypatch.delenv("PROVIDER_HOST_SETTINGS", raising=False)
    provider_and_ai(project)
    config = load_config(project.config_path)
    for name in ("provider", "ai"):
        migrations.upgrade(config.migration_set(name), project.engine, "heads")

    code, r = run_json(capfd, "troubleshoot")

    assert (code, r["outcome"]) == (0, "succeeded"), r
    body = artifact(project, r["run_id"], DIAGNOSIS_ARTIFACT)
    drift = next(c for c in body["checks"] if c["code"] == "drift")
    # The provider's models cannot be imported; the ai set's drift check still ran.
    assert drift["could_not_run"] == "provider: KeyError: 'PROVIDER_HOST_SETTINGS'"
    assert drift["checked"] == ("provider: could not run: KeyError: 'PROVIDER_HOST_SETTINGS'; "
                                "ai: models and schema agree")
    assert body["could_not_run"] == ["drift"] and body["all_clear"] is False
    others = [c for c in body["checks"] if c["code"] != "drift"]
    assert len(others) == len(diagnose.CHECKS) - 1  # every other check ran
    assert [c["could_not_run"] for c in others] == [None] * len(others)
    assert versions(project) == {"f0000000bb02"} and versions(project, "alembic_version_ai") == {"cdf6709a3b1e"}
    assert records.verify_record(records.run_dir_for(config.outputs_dir, r["run_id"]), config.allowed_signers).ok


def test_troubleshoot_on_two_current_revisions_names_the_command_to_run(project, capfd):
    write_sets(project, {"main": f'alembic_ini = "{FIXTURES / "branched" / "alembic.ini"}"'})
    mset = load_config(project.config_path).migration_set("main")
    migrations.upgrade(mset, project.engine, "heads")
    migrations.downgrade(mset, project.engine, "b1111111bill")  # undoes the merge only
    assert versions(project) == {"b1111111bill", "c2222222crm0"}

    code, r = run_json(capfd, "troubleshoot")

    assert (code, r["outcome"]) == (0, "succeeded"), r
    body = artifact(project, r["run_id"], DIAGNOSIS_ARTIFACT)
    assert body["could_not_run"] == []
    problems = [p for c in body["checks"] for p in c["problems"]]
    assert [(p["code"], p["migration_set"]) for p in problems] == [("not_up_to_date", "main")]
    assert problems[0]["next_step"] == "dbrunbook run apply -t local -p migration_set main -p dry_run false"
    assert "The database has 2 current revisions: a partial downgrade of a merge" in problems[0]["cause"]
    assert [row["revision"] for row in problems[0]["evidence"]] == ["d3333333merg"]
    assert versions(project) == {"b1111111bill", "c2222222crm0"}  # troubleshoot changed nothing


# --- review ---------------------------------------------------------------------------------------------
def review_findings(proj, run_id: str) -> dict[str, str]:
    body = artifact(proj, run_id, "review.json")
    return {f["rule"]: f["message"] for f in body["findings"] if f["level"] == "error"}


def test_review_round_trip_names_the_enum_type_a_downgrade_leaves_behind(project, capfd):
    write_sets(project, {"main": f'alembic_ini = "{FIXTURES / "enum_left_behind" / "alembic.ini"}"'})

    code, r = run_json(capfd, "review", "-p", "revision", "e0000000aa02")

    assert (code, r["outcome"]) == (3, "stopped-at-guard"), r
    assert r["failing_step"]["ename"] == "ReviewFailed"
    assert r["failing_step"]["heading"].startswith("## 10. Verdict")  # every check before it ran
    found = review_findings(project, r["run_id"])
    for prefix in ("round-trip", "stairway"):
        assert found[f"{prefix}:schema-not-restored"] == ("the schema after downgrade differs from before upgrade: "
                                                          "type added public.ticket_status")
        assert found[f"{prefix}:reupgrade-failed"] == ('upgrading again after the downgrade failed: '
                                                       'type "ticket_status" already exists')
    with project.engine.connect() as conn:  # the target was never migrated, no scratch database left
        assert conn.execute(sa.text("SELECT to_regclass('alembic_version') IS NULL AND "
                                    "to_regtype('ticket_status') IS NULL")).scalar()
        assert conn.execute(sa.text("SELECT count(*) FROM pg_database WHERE datname LIKE 'dbrunbook_scratch_%'")
                            ).scalar() == 0


def test_review_of_a_provider_style_base_revision_reports_the_tables_it_keeps(project, capfd):
    write_sets(project, {"main": f'alembic_ini = "{FIXTURES / "provider_style" / "alembic.ini"}"'})

    code, r = run_json(capfd, "review", "-p", "revision", "f0000000bb01")

    assert (code, r["failing_step"]["heading"][:13]) == (3, "## 10. Verdic"), r
    found = review_findings(project, r["run_id"])
    assert found["round-trip:schema-not-restored"].startswith(
        "the schema after downgrade differs from before upgrade: table added public.provider_connection; "
        "table added public.provider_event; ")
    assert found["round-trip:reupgrade-failed"] == ('upgrading again after the downgrade failed: '
                                                    'relation "provider_connection" already exists')
    # The later, reversible revision was never reached by the stairway: it stops at the first failure.
    body = artifact(project, r["run_id"], "review.json")
    assert {f["revision"] for f in body["findings"] if f["rule"].startswith("stairway:")} == {"f0000000bb01"}


def test_review_whose_round_trip_cannot_run_says_why_and_reaches_the_verdict(project, capfd):
    folder = project.root / "needs_settings"
    shutil.copytree(FIXTURES / "enum_left_behind", folder, ignore=shutil.ignore_patterns("__pycache__"))
    env_py = folder / "alembic" / "env.py"
    # An env.py that needs its application's settings online (offline rendering does not).
    env_py.write_text(env_py.read_text().replace(
        "def run_migrations_online() -> None:\n",
        "def run_migrations_online() -> None:\n    import os\n    os.environ['MYAPP_SETTINGS']\n"))
    write_sets(project, {"main": f'alembic_ini = "{folder / "alembic.ini"}"'})

    code, r = run_json(capfd, "review", "-p", "revision", "e0000000aa02")

    assert (code, r["failing_step"]["ename"]) == (3, "ReviewFailed"), r
    found = review_findings(project, r["run_id"])
    assert found["round-trip:could-not-run"] == ("could not run: preparing parent e0000000aa01: "
                                                 "KeyError: 'MYAPP_SETTINGS'")
    assert found["stairway:could-not-run"] == "could not run: KeyError: 'MYAPP_SETTINGS'"
    assert "round-trip:upgrade-failed" not in found  # not the revision's fault
    body = artifact(project, r["run_id"], "review.json")
    downgrade = body["checklist"][4]
    assert (downgrade["answer"], downgrade["evidence"]) == (
        "problem", "could not run: preparing parent e0000000aa01: KeyError: 'MYAPP_SETTINGS'")
    # The SQL lint (offline) still ran on the revision.
    assert any(f["rule"].startswith("squawk:") for f in body["findings"])


# --- alembic check in apply -----------------------------------------------------------------------------
def test_apply_dry_run_shows_that_alembic_check_could_not_run_and_completes(project, capfd, monkeypatch):
    monkeypatch.delenv("PROVIDER_HOST_SETTINGS", raising=False)
    provider_and_ai(project)
    migrations.upgrade(load_config(project.config_path).migration_set("provider"), project.engine, "heads")

    code, r = run_json(capfd, "apply", "-p", "migration_set", "provider")

    assert (code, r["outcome"]) == (0, "succeeded"), r
    shown = cell_text(project, r["run_id"], "## 14. Schema check")
    assert "could not run: KeyError: &#x27;PROVIDER_HOST_SETTINGS&#x27;" in shown or \
        "could not run: KeyError: 'PROVIDER_HOST_SETTINGS'" in shown
    assert versions(project) == {"f0000000bb02"}


# --- the helper itself ----------------------------------------------------------------------------------
def test_attempt_returns_the_reason_and_lets_guards_through():
    failed = checks.attempt("rollback plan", lambda: {}["X"])
    assert isinstance(failed, checks.CouldNotRun)
    assert (failed.check, str(failed)) == ("rollback plan", "could not run: KeyError: 'X'")
    assert failed.where.endswith("in <lambda>")
    assert checks.attempt("sum", sum, [1, 2]) == 3

    def guard():
        raise ConfirmationRequired("Run again with -p confirm app.")

    with pytest.raises(ConfirmationRequired, match="^Run again with -p confirm app.$"):
        checks.attempt("approval", guard)


def test_a_reason_never_shows_a_password():
    err = RuntimeError("could not connect to postgresql://app:hunter2@db.internal/app")
    assert checks.reason_of(err) == "RuntimeError: could not connect to postgresql://app:***@db.internal/app"
    assert checks.reason_of(ValueError("host=db password=hunter2")) == "ValueError: host=db password=***"


# --- the deploy checklist -------------------------------------------------------------------------------
def test_deploy_dry_run_goes_through_the_checklist_when_the_rollback_plan_cannot_be_rendered(project, capfd):
    folder = project.root / "online_downgrade"
    shutil.copytree(FIXTURES / "provider_style", folder, ignore=shutil.ignore_patterns("__pycache__"))
    script = folder / "alembic" / "versions" / "f0000000bb02_add_connection_description.py"
    # A downgrade that reads the live schema first: it cannot be rendered offline (a MockConnection).
    script.write_text(script.read_text().replace(
        '    op.drop_column("provider_connection", "description")',
        '    columns = [c["name"] for c in sa.inspect(op.get_bind()).get_columns("provider_connection")]\n'
        '    if "description" in columns:\n'
        '        op.drop_column("provider_connection", "description")'))
    write_sets(project, {"provider": f'alembic_ini = "{folder / "alembic.ini"}"'})
    migrations.upgrade(load_config(project.config_path).migration_set("provider"), project.engine, "f0000000bb01")

    code, r = run_json(capfd, "deploy")

    assert (code, r["outcome"]) == (0, "succeeded"), r
    plan = cell_text(project, r["run_id"], "## 10. Pre-deployment: plan the rollback")
    # The downgrade cannot be rendered offline: the plan still gives the command and names the online-only
    # revision with its reason (the inspector on a mock connection), instead of calling it a no-op.
    assert "dbrunbook run rollback -t local -p migration_set provider" in plan, plan
    assert "f0000000bb02: it calls columns = [c[\"name\"] for c in sa.inspect(op.get_bind())" in plan, plan
    assert cell_text(project, r["run_id"], "## 23. Post-deployment: changelog entry")  # the checklist went on
    assert versions(project) == {"f0000000bb01"}  # a dry run changed nothing
