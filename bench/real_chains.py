"""Every procedure of dbrunbook on real third-party Alembic chains, beside plain Alembic (not part of make test).

For each chain: a venv under ``bench/_work/venvs/CHAIN`` with the application from PyPI and ``-e`` of the
dbrunbook checkout (cached: reused when its stamp names the same requirements), a project folder
``bench/_work/chains/CHAIN`` with a ``dbrunbook.toml`` written as the README says, its own embedded PostgreSQL,
and two fresh databases on it: ``app`` (driven by ``dbrunbook run``) and ``plain`` (driven by plain Alembic's
``alembic.command`` through ``bench/_plain_alembic.py``, run in the same venv). Each procedure is one
subprocess with a timeout; after each, the database is checked with SQL (the version table's contents, a
table the chain creates), and the record with ``dbrunbook verify``. One failing procedure never stops the
others.

    python bench/real_chains.py [--chains mlflow,phoenix,prefect] [--keep] [--dbrunbook PATH] [--report-only]

Results: ``bench/_work/results/CHAIN.json`` per chain, and the section "Real chains" of bench/RESULTS.md
rendered from all of them (so chains run in separate processes still land in one table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, ROOT, WORK, write_section  # noqa: E402

PLAIN = BENCH / "_plain_alembic.py"
VENVS = WORK / "venvs"
CHAINS_DIR = WORK / "chains"
RESULTS_DIR = WORK / "results"
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
RUN_TIMEOUT = 1200.0  # one dbrunbook run; phoenix alone takes ~20 s to import under load
PLAIN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Chain:
    """A real application whose Alembic chain for PostgreSQL ships in its wheel, and how it is driven."""

    name: str
    requirements: tuple[str, ...]
    package_dir: str  # the migrations folder, relative to site-packages
    driver: str  # the SQLAlchemy driver its env.py expects: psycopg2 / asyncpg
    version_locations: str = ""  # relative to package_dir, when the revisions are not in versions/
    url_env: str = ""  # the variable env.py (or the settings it imports) reads its URL from
    baseline: str = ""  # the set's ``baseline``: the tables that predate its first revision (create_all)
    plain_connection: bool = False  # env.py only runs on a connection in config.attributes
    plain_anyio_thread: bool = False  # env.py only runs inside an AnyIO worker thread
    bootstrap: str = ""  # Python run once on a fresh database before the chain (argv[1] = URL)
    head_table: str = ""  # a table the chain creates, checked after apply/deploy
    notes: str = ""


#: mlflow creates its pre-Alembic tables with ``InitialBase.metadata.create_all`` and then runs
#: ``command.upgrade(config, "heads")`` on them (mlflow/store/db/utils.py, _initialize_tables); the bootstrap
#: does the same create_all, so the chain starts where mlflow's own starts.
_MLFLOW_BOOTSTRAP = """
import sys, sqlalchemy as sa
from mlflow.store.tracking.dbmodels.initial_models import Base
Base.metadata.create_all(sa.create_engine(sys.argv[1]))
"""

CHAINS = {
    "mlflow": Chain(
        name="mlflow", requirements=("mlflow", "psycopg2-binary"), package_dir="mlflow/store/db_migrations",
        driver="psycopg2", bootstrap=_MLFLOW_BOOTSTRAP, head_table="logged_models",
        baseline="mlflow.store.tracking.dbmodels.initial_models:Base",
        notes="env.py reads sqlalchemy.url; with config.attributes['connection'] it opens a new connection "
              "from connection.engine; the pre-Alembic tables come from create_all (baseline = "
              "initial_models:Base for scratch databases)"),
    "phoenix": Chain(
        name="phoenix", requirements=("arize-phoenix", "asyncpg", "psycopg2-binary"),
        package_dir="phoenix/db/migrations", driver="asyncpg", head_table="projects",
        notes="async: env.py wraps sqlalchemy.url in an AsyncEngine and calls asyncio.run(); a sync "
              "connection in config.attributes is used as it is"),
    "prefect": Chain(
        name="prefect", requirements=("prefect", "asyncpg", "psycopg2-binary"),
        package_dir="prefect/server/database/_migrations", version_locations="versions/postgresql",
        driver="asyncpg", url_env="PREFECT_API_DATABASE_CONNECTION_URL", head_table="flow_run",
        plain_anyio_thread=True,
        notes="async: env.py ignores sqlalchemy.url and the shared connection, reads "
              "PREFECT_API_DATABASE_CONNECTION_URL through prefect.settings when imported, and runs "
              "anyio.from_thread (run_async_from_worker_thread)"),
}
#: Chains that were tried and are not in the table, with why (see RESULTS.md).
EXCLUDED = {
    "dagster-postgres": "env.py refuses to run without config.attributes['connection']; with one, revision "
                        "006 raises 'currently upgrading instance not set' (the chain only runs inside "
                        "'dagster instance migrate'; new databases get create_all + stamp)",
    "buildbot": "revision 059 is an empty placeholder; new databases get create_all of the current model + "
                "stamp, so plain 'alembic upgrade heads' from an empty database fails at 060",
}


# --- processes ---------------------------------------------------------------------------------------------
@dataclass
class Proc:
    argv: list[str]
    status: int | None  # None: timed out
    seconds: float
    stdout: str
    stderr: str


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> Proc:
    """Run one subprocess with a timeout; never raises for its failure."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        return Proc(argv, done.returncode, time.perf_counter() - t0, done.stdout, done.stderr)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        errs = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return Proc(argv, None, time.perf_counter() - t0, out, errs + f"\n[timed out after {timeout:.0f}s]")


def last_error_line(text: str) -> str:
    """The last line of a traceback that names an exception, else the last non-empty line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Refused|Failed|Invalid|Found|Mismatch|Held)\b.*:", ln) or \
                re.match(r"^[\w.]+\.\w+Error\b", ln):
            return ln[:400]
    return lines[-1][:400] if lines else ""


# --- setup -------------------------------------------------------------------------------------------------
def venv_for(chain: Chain, dbrunbook: Path, log) -> Path:
    """The chain's venv with the application and dbrunbook installed; reused when its stamp matches."""
    venv = VENVS / chain.name
    stamp = venv / ".real-chains-installed"
    wanted = json.dumps({"requirements": chain.requirements, "dbrunbook": str(dbrunbook)})
    if stamp.exists() and stamp.read_text() == wanted:
        return venv
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for argv in (pip + ["--upgrade", "pip"], pip + list(chain.requirements), pip + ["-e", str(dbrunbook)]):
        log(f"  $ {' '.join(argv[2:])}")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"install failed for {chain.name}: {last_error_line(done.stderr)}")
    stamp.write_text(wanted)
    return venv


def site_packages(venv: Path) -> Path:
    return venv / "lib" / PY / "site-packages"


def write_project(chain: Chain, venv: Path, dbrunbook: Path) -> Path:
    """The user's project folder: an alembic.ini pointing into the installed package, and dbrunbook.toml.

    The wheels' own alembic.ini files give script_location relative to the current folder (mlflow, phoenix)
    or as a package resource without the PostgreSQL version folder (prefect): the applications set it in
    code. A user drives the installed chain with a two-line ini of their own, as here.
    """
    project = CHAINS_DIR / chain.name
    project.mkdir(parents=True, exist_ok=True)
    migrations = site_packages(venv) / chain.package_dir
    ini = ["[alembic]", f"script_location = {migrations}"]
    if chain.version_locations:
        ini.append(f"version_locations = {migrations / chain.version_locations}")
    (project / "alembic.ini").write_text("\n".join(ini) + "\n")
    toml = [
        "# Written by bench/real_chains.py the way README 'Configuration' says; runbooks from the checkout.",
        "[project]",
        f'runbooks = "{dbrunbook / "runbooks"}"',
        "",
        "[targets.local]",
        "embedded = true",
        'database = "app"',
        "",
        f"[migration_sets.{chain.name}]",
        'alembic_ini = "alembic.ini"',
        'version_table = "alembic_version"',
    ]
    if chain.url_env:
        toml.append(f'url_env = "{chain.url_env}"')
    if chain.baseline:
        toml.append(f'baseline = "{chain.baseline}"')
    # README "Configuration": the DBAPI the project's env.py expects (prefect hands asyncpg-only connect_args).
    toml.append(f'driver = "{chain.driver}"')
    (project / "dbrunbook.toml").write_text("\n".join(toml) + "\n")
    return project


_SQL = """
import json, sys, psycopg
url, query = sys.argv[1], sys.argv[2]
with psycopg.connect(url, autocommit=True) as c:
    rows = c.execute(query).fetchall()
print(json.dumps([list(r) for r in rows], default=str))
"""


class Chainrun:
    """One chain's run: its venv, project, server, two databases, and the rows of the table."""

    def __init__(self, chain: Chain, venv: Path, project: Path, log):
        self.chain, self.venv, self.project, self.log = chain, venv, project, log
        self.python = str(venv / "bin" / "python")
        self.dbrunbook = str(venv / "bin" / "dbrunbook")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DBRUNBOOK_", "VIRTUAL_ENV"))}
        self.env.update(DBRUNBOOK_CONFIG=str(project / "dbrunbook.toml"), PYTHONUNBUFFERED="1",
                        PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}")
        self.label = chain.name
        self.rows: list[dict] = []
        self.graph: dict = {}
        self.on_row = None  # called with the rows after each procedure (partial results survive a kill)
        self.only: list[str] = []  # procedure names (prefixes) to run; the others are done by plain Alembic

    # --- database helpers ----------------------------------------------------------------------------------
    def start_server(self) -> None:
        p = run([self.dbrunbook, "db", "start"], cwd=self.project, env=self.env, timeout=120)
        if p.status != 0:
            raise RuntimeError(f"embedded server did not start: {last_error_line(p.stderr + p.stdout)}")
        p = run([self.dbrunbook, "db", "url"], cwd=self.project, env=self.env, timeout=60)
        self.admin = p.stdout.strip().splitlines()[-1]  # postgresql://postgres@/postgres?host=…&port=…

    def url(self, database: str, driver: str | None = None) -> str:
        base = self.admin.replace("@/postgres?", f"@/{database}?", 1)
        return base.replace("postgresql://", f"postgresql+{driver}://", 1) if driver else base

    def sql(self, database: str, query: str):
        p = run([self.python, "-c", _SQL, self.url(database), query], cwd=self.project, env=self.env, timeout=120)
        if p.status != 0:
            return f"error: {last_error_line(p.stderr)}"
        return json.loads(p.stdout)

    def versions(self, database: str) -> list[str] | str:
        rows = self.sql(database, "SELECT version_num FROM alembic_version ORDER BY 1"
                        if self.table_exists(database, "alembic_version") else "SELECT 'x' WHERE false")
        return sorted(r[0] for r in rows) if isinstance(rows, list) else rows

    def table_exists(self, database: str, table: str) -> bool:
        rows = self.sql(database, f"SELECT to_regclass('public.{table}') IS NOT NULL")
        return isinstance(rows, list) and bool(rows and rows[0][0])

    def fresh_databases(self) -> None:
        for name in ("app", "plain"):
            self.sql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            self.sql("postgres", f"CREATE DATABASE {name}")
            if self.chain.bootstrap:
                p = run([self.python, "-c", self.chain.bootstrap, self.url(name, self.chain.driver)],
                        cwd=self.project, env=self.env, timeout=600)
                if p.status != 0:
                    raise RuntimeError(f"bootstrap of {name} failed: {last_error_line(p.stderr)}")

    # --- plain alembic ---------------------------------------------------------------------------------------
    def plain(self, *args: str, database: str = "plain") -> Proc:
        argv = [self.python, str(PLAIN), str(self.project / "alembic.ini"), self.url(database, self.chain.driver)]
        if self.chain.plain_connection:
            argv.append("--connection")
        if self.chain.plain_anyio_thread:
            argv.append("--anyio-thread")
        env = dict(self.env)
        if self.chain.url_env:
            env[self.chain.url_env] = self.url(database, self.chain.driver)
        return run(argv + list(args), cwd=self.project, env=env, timeout=PLAIN_TIMEOUT)

    def read_graph(self) -> None:
        """Revisions, heads, merge points, the head's parent and a revision 5 below it (plain Alembic)."""
        code = (
            "import json,sys\nfrom alembic.config import Config\nfrom alembic.script import ScriptDirectory\n"
            "s=ScriptDirectory.from_config(Config(sys.argv[1]))\nrevs=list(s.walk_revisions())\n"
            "heads=s.get_heads()\nchain=[]\nr=s.get_revision(heads[0])\n"
            "while r is not None and len(chain)<7:\n chain.append(r.revision)\n"
            " d=r.down_revision\n d=d[0] if isinstance(d,tuple) else d\n r=s.get_revision(d) if d else None\n"
            "print(json.dumps({'revisions':len(revs),'heads':sorted(heads),"
            "'merges':sum(1 for x in revs if x.is_merge_point),'below_head':chain}))\n"
        )
        p = run([self.python, "-c", code, str(self.project / "alembic.ini")], cwd=self.project, env=self.env,
                timeout=300)
        if p.status != 0:
            raise RuntimeError(f"cannot read the revision graph: {last_error_line(p.stderr)}")
        self.graph = json.loads(p.stdout.strip().splitlines()[-1])

    # --- dbrunbook ---------------------------------------------------------------------------------------------
    def dbr(self, runbook: str, **params: str) -> tuple[Proc, dict]:
        argv = [self.dbrunbook, "run", runbook, "-t", "local", "--json"]
        for k, v in params.items():
            argv += ["-p", k, str(v)]
        p = run(argv, cwd=self.project, env=self.env, timeout=RUN_TIMEOUT)
        try:
            result = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {}
        except json.JSONDecodeError:
            result = {}
        return p, result

    def record_error(self, result: dict, p: Proc) -> str:
        """The failing step's exception (ename: evalue) from the saved notebook, else the CLI's error."""
        if result.get("error"):
            return f"{result.get('error_type', '')}: {result['error']}"[:500]
        record = result.get("record_dir")
        if record and (Path(record) / "notebook.ipynb").is_file():
            nb = json.loads((Path(record) / "notebook.ipynb").read_text())
            for cell in nb.get("cells", []):
                for out in cell.get("outputs", []):
                    if out.get("output_type") == "error":
                        evalue = " ".join(str(out.get("evalue", "")).split())
                        # The deepest frame in the chain's own revision files: which revision it was.
                        frames = re.findall(r"(versions/[\w./-]+\.py):(\d+)",
                                            re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(out.get("traceback", []))))
                        where = f" (in {frames[-1][0]}:{frames[-1][1]})" if frames else ""
                        return f"{out.get('ename')}: {evalue}{where}"[:500]
            step = result.get("failing_step") or {}
            if step:
                return f"stopped at: {step.get('title') or step}"[:500]
        return last_error_line(p.stderr)

    def verified(self, result: dict) -> str:
        record = result.get("record_dir")
        if not record:
            return "no record"
        p = run([self.dbrunbook, "verify", record], cwd=self.project, env=self.env, timeout=300)
        return "yes" if p.status == 0 else f"NO: {last_error_line(p.stdout + p.stderr)}"

    def repair(self, expect: list[str], *, stamp: bool) -> str:
        """Bring `app` to the state the failed procedure should have left, with plain Alembic.

        So that one failing procedure does not fail every later one for the same reason: each procedure
        starts from the state the list expects, and the table says when that took plain Alembic's help.
        """
        target = expect[0] if len(expect) == 1 else "heads"
        attempts = [["stamp", target]] if stamp else [["upgrade", target], ["downgrade", target]]
        for args in attempts:
            q = self.plain(*args, database="app")
            if q.status == 0 and self.versions("app") == sorted(expect):
                self.log(f"    repaired: plain alembic {' '.join(args)} on app")
                return f"plain alembic {' '.join(args)}"
        return "repair failed: " + last_error_line(q.stderr)

    # --- the procedure list ----------------------------------------------------------------------------------
    def step(self, procedure: str, runbook: str | None, params: dict, plain_args: list[list[str]],
             expect: list[str] | None, *, check_table: bool = False, before_both=None) -> None:
        """Run one procedure through dbrunbook on `app` and its plain-Alembic equivalent on `plain`."""
        if self.only and not any(procedure.startswith(p) for p in self.only):
            done = {p for p in self.only for r in self.rows if r["procedure"].startswith(p)}
            if done == set(self.only):
                return  # nothing selected is left
            if before_both:
                before_both()
            if expect and self.versions("app") != sorted(expect):  # plain Alembic does it; not timed
                self.repair(expect, stamp=runbook == "stamp")
            return
        self.log(f"  {procedure} ...")
        if before_both:
            before_both()
        row: dict = {"chain": self.chain.name, "procedure": procedure}
        if runbook:
            p, result = self.dbr(runbook, **params)
            row.update(exit=p.status if p.status is not None else "timeout", seconds=round(p.seconds, 1),
                       outcome=result.get("outcome", ""), verified=self.verified(result),
                       record=result.get("record_dir", ""),
                       error="" if p.status == 0 else self.record_error(result, p))
        else:  # `dbrunbook verify` of the whole archive
            p = run([self.dbrunbook, "verify", "-t", "local"], cwd=self.project, env=self.env, timeout=600)
            row.update(exit=p.status if p.status is not None else "timeout", seconds=round(p.seconds, 1),
                       outcome="", verified=last_error_line(p.stdout) if p.status == 0 else "see error",
                       error="" if p.status == 0 else last_error_line(p.stdout + p.stderr))
        state = self.versions("app")
        checks = []
        if expect is not None:
            checks.append(f"version={','.join(state) if isinstance(state, list) else state}"
                          + (" ok" if state == sorted(expect) else f" (want {','.join(expect) or 'none'})"))
        if check_table and self.chain.head_table:
            ok = self.table_exists("app", self.chain.head_table)
            checks.append(f"{self.chain.head_table} {'exists' if ok else 'MISSING'}")
        row["state"] = "; ".join(checks) or "-"
        row["state_ok"] = (expect is None or state == sorted(expect)) and (
            not check_table or not self.chain.head_table or self.table_exists("app", self.chain.head_table))
        if expect and state != sorted(expect):
            row["repaired"] = self.repair(expect, stamp=runbook == "stamp")
        plain_seconds, plain_status, plain_error = 0.0, 0, ""
        for args in plain_args:
            q = self.plain(*args)
            plain_seconds += q.seconds
            if q.status != 0 and not plain_error:
                plain_status, plain_error = q.status if q.status is not None else "timeout", last_error_line(q.stderr)
        row.update(plain_seconds=round(plain_seconds, 1) if plain_args else None, plain_exit=plain_status,
                   plain_error=plain_error, plain_state=",".join(self.versions("plain")) if plain_args else "")
        row["chain"] = self.label
        self.rows.append(row)
        if self.on_row:
            self.on_row(self.rows)
        self.log(f"    exit {row['exit']} in {row['seconds']}s, {row['state']}"
                 + (f" — {row['error']}" if row["error"] else "")
                 + (f"; plain {row['plain_seconds']}s exit {plain_status}" if plain_args else ""))

    def procedures(self) -> None:
        g, ms = self.graph, self.chain.name
        heads, below = g["heads"], g["below_head"]
        parent, older = below[1], below[min(5, len(below) - 1)]

        def forget_version() -> None:  # a database built outside Alembic: schema at `older`, no version row
            for db_name in ("app", "plain"):
                self.sql(db_name, "DELETE FROM alembic_version")

        self.step("status", "status", {"migration_set": ms}, [["current"]], [])
        self.step("preview", "preview", {"migration_set": ms, "revision": "heads"},
                  [["upgrade", "heads", "--sql"]], [])
        self.step("apply (dry run)", "apply", {"migration_set": ms, "revision": "heads", "dry_run": "true"},
                  [["upgrade", "heads", "--sql"]], [])
        self.step("apply", "apply", {"migration_set": ms, "revision": "heads", "dry_run": "false"},
                  [["upgrade", "heads"]], heads, check_table=True)
        self.step("verify", "verify", {}, [["current"]], heads)
        self.step("rollback -1", "rollback", {"migration_set": ms, "revision": "-1", "dry_run": "false",
                                              "allow_data_loss": "true"}, [["downgrade", "-1"]], [parent])
        self.step(f"rollback to {older}", "rollback",
                  {"migration_set": ms, "revision": older, "dry_run": "false", "allow_data_loss": "true"},
                  [["downgrade", older]], [older])
        self.step(f"stamp {older} (row deleted first)", "stamp",
                  {"migration_set": ms, "revision": older, "dry_run": "false"}, [["stamp", older]], [older],
                  before_both=forget_version)
        refused = self.rows[-1] if self.rows and self.rows[-1]["procedure"].startswith("stamp") else {}
        if refused.get("exit") == 3 and "the live schema differs" in refused.get("error", ""):
            # The truth check found that the schema the downgrades left is not the one the chain builds at
            # `older` (a downgrade that does not undo its upgrade): refusing was right. The operator's
            # recorded override is the next procedure.
            self.step(f"stamp {older} -p force true (after that refusal)", "stamp",
                      {"migration_set": ms, "revision": older, "dry_run": "false", "force": "true"}, [], [older],
                      before_both=lambda: self.sql("app", "DELETE FROM alembic_version"))
        self.step("troubleshoot", "troubleshoot", {"migration_set": ms}, [["current"]], [older])
        self.step(f"review {below[0]}", "review", {"migration_set": ms, "revision": below[0]},
                  [["upgrade", "+1"], ["downgrade", "-1"]], [older])
        self.step("deploy", "deploy", {"migration_set": ms, "revision": "heads", "dry_run": "false"},
                  [["upgrade", "heads"]], heads, check_table=True)
        self.step("dbrunbook verify -t local", None, {}, [], heads)


# --- the table ---------------------------------------------------------------------------------------------
def render(results: list[dict]) -> str:
    out = ["## Real chains (`bench/real_chains.py`)", "",
           "Real applications from PyPI, each in its own venv with `pip install -e` of dbrunbook, on a fresh "
           "embedded PostgreSQL 18 per chain: database `app` through `dbrunbook run … -t local --json`, "
           "database `plain` through plain Alembic (`alembic.command`, same venv) step for step. After each "
           "procedure the version table and a table the chain creates are read with SQL; each record is "
           "checked with `dbrunbook verify RUN_DIR`. Seconds are wall time of one run on the shared 2-core "
           "machine (load from other sessions: read them as orders of magnitude). When a procedure leaves `app` "
           "in another state than the list expects (✗), plain Alembic brings it there (\"then plain alembic "
           "…\") so that the next procedure is tested on its own and not failed by the same cause again. A stamp "
           "that the truth check refuses because the live schema really differs (a downgrade of the chain that does "
           "not undo its upgrade: mlflow's 17e22815139b and 27 more downgrade with `pass`) is followed by the "
           "operator's recorded override, `-p force true`. Review's findings on these chains are real: plain "
           "Alembic runs the same downgrades without noticing what they leave behind.", ""]
    for res in results:
        g = res.get("graph", {})
        out.append(f"**{res['chain']}** {res.get('version', '')}: {g.get('revisions', '?')} revisions, "
                   f"{g.get('merges', '?')} merge points, heads {', '.join(g.get('heads', []))}; driver "
                   f"{res.get('driver')}; {res.get('notes', '')}. Run {res.get('when', '')}"
                   + (f" — setup failed: {res['setup_error']}" if res.get("setup_error") else "") + ".")
        out.append("")
    out += ["| chain | procedure | exit | s | record verified | state (SQL) | plain Alembic s (exit) | "
            "error |", "|---|---|---|---|---|---|---|---|"]
    for res in results:
        for r in res.get("rows", []):
            plain = "—" if r.get("plain_seconds") is None else f"{r['plain_seconds']} ({r['plain_exit']})"
            err = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")
            if r.get("plain_error"):
                err += f" [plain: {r['plain_error']}]".replace("|", "\\|")
            state = r["state"] + ("" if r.get("state_ok") else " ✗") + (
                f" (then {r['repaired']})" if r.get("repaired") else "")
            out.append(f"| {r['chain']} | {r['procedure']} | {r['exit']} | {r['seconds']} | {r['verified']} | "
                       f"{state} | {plain} | {err[:300]} |")
    out += ["", "Not in the table: " + "; ".join(f"**{k}** — {v}" for k, v in EXCLUDED.items()) + "."]
    return "\n".join(out)


def load_results(names: list[str] | None = None) -> list[dict]:
    """Saved results of the named chains (with their variants), or of all."""
    files = sorted(RESULTS_DIR.glob("*.json"), key=lambda f: (f.stem.removesuffix("-exported"), f.stem)) \
        if RESULTS_DIR.is_dir() else []
    return [json.loads(f.read_text()) for f in files
            if names is None or f.stem.removesuffix("-exported") in names]


def run_chain(chain: Chain, dbrunbook: Path, keep: bool, *, only: list[str] = (), export_url: bool = False) -> dict:
    """Run the procedure list on one chain and save its results (``export_url``: the user also exports the
    chain's url_env with the target's URL by hand, the workaround for settings read at import time)."""
    label = chain.name + (" (url_env exported)" if export_url else "")
    slug = chain.name + ("-exported" if export_url else "")
    def log(msg: str) -> None:
        print(f"[{chain.name} {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    result = {"chain": label, "driver": chain.driver, "notes": chain.notes, "rows": [],
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dbrunbook": str(dbrunbook)}
    cr = None

    def save(data: dict) -> None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{slug}.json").write_text(json.dumps(data, indent=2))

    try:
        log("venv")
        venv = venv_for(chain, dbrunbook, log)
        top = chain.requirements[0]
        p = run([str(venv / "bin" / "python"), "-m", "pip", "show", top], cwd=WORK, env=dict(os.environ),
                timeout=120)
        m = re.search(r"^Version: (.+)$", p.stdout, re.M)
        result["version"] = f"{top} {m.group(1)}" if m else top
        project = write_project(chain, venv, dbrunbook)
        shutil.rmtree(project / "outputs", ignore_errors=True)
        cr = Chainrun(chain, venv, project, log)
        cr.on_row = lambda rows: save({**result, "rows": rows})
        cr.label, cr.only = label, list(only)
        # As a new user would: a key of their own, trusted in the project's allowed_signers (runs never create
        # or trust one by themselves).
        if not (project / ".dbrunbook" / "keys" / "operator_ed25519").is_file():
            run([cr.dbrunbook, "keygen", "--trust"], cwd=project, env=cr.env, timeout=120)
        elif not (project / "allowed_signers").is_file():
            run([cr.dbrunbook, "keygen", "--force", "--trust"], cwd=project, env=cr.env, timeout=120)
        cr.start_server()
        if export_url and chain.url_env:
            cr.env[chain.url_env] = cr.url("app", chain.driver)
        cr.fresh_databases()
        cr.read_graph()
        result["graph"] = cr.graph
        log(f"graph: {cr.graph}")
        cr.procedures()
    except Exception as err:  # setup failed: say so in the table, go on with the next chain
        result["setup_error"] = f"{type(err).__name__}: {err}"
        log(result["setup_error"])
    finally:
        if cr is not None:
            result["rows"] = cr.rows
            if not keep:
                run([cr.dbrunbook, "db", "stop"], cwd=cr.project, env=cr.env, timeout=120)
    save(result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default=",".join(CHAINS), help=f"comma-separated, of: {', '.join(CHAINS)}")
    ap.add_argument("--keep", action="store_true", help="leave each chain's embedded server running")
    ap.add_argument("--dbrunbook", default=str(ROOT), help="the dbrunbook checkout to install (default: this one)")
    ap.add_argument("--report-only", action="store_true", help="render RESULTS.md from the saved results")
    ap.add_argument("--procedures", default="", help="comma-separated procedure names (prefixes) to run through "
                    "dbrunbook (default: all); a skipped one that changes the database is done by plain "
                    "Alembic on `app` only, so plain timings after it are not comparable")
    ap.add_argument("--export-url-env", action="store_true",
                    help="also export each chain's url_env with the target's URL, as a user would by hand")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.chains.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHAINS]
    if unknown:
        ap.error(f"unknown chain(s) {', '.join(unknown)}; known: {', '.join(CHAINS)}")
    dbrunbook = Path(args.dbrunbook).resolve()
    if not args.report_only:
        for name in names:
            run_chain(CHAINS[name], dbrunbook, args.keep, export_url=args.export_url_env,
                      only=[p.strip() for p in args.procedures.split(",") if p.strip()])
    body = render(load_results())
    write_section("real_chains", body)
    print(body)
    failures = sum(1 for res in load_results(names) for r in res.get("rows", []) if r["exit"] != 0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
