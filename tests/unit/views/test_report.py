"""The HTML archive from signed records made here (real SSH signatures, a notebook shaped like papermill's)."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
from bs4 import BeautifulSoup

from dbrunbook import protocol, records
from dbrunbook.views import report

STARTED = datetime(2026, 11, 23, 22, 5, 1, tzinfo=UTC)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def _notebook(run_id: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"parameters": {"target": "local", "revision": "0012", "dry_run": False,
                                               "run_id": run_id, "record_dir": "/x"},
                                "version": "2.7.0", "duration": 3.5, "start_time": "2026-11-23T22:05:02+00:00",
                                "end_time": "2026-11-23T22:05:05+00:00", "exception": True}
    params = nbformat.v4.new_code_cell(
        'target: str = "local"  # database target\nrevision: str = "heads"  # where to go\n'
        'dry_run: bool = True  # change nothing\nrun_id: str = ""  # set by the launcher\n'
        'record_dir: str = ""  # set by the launcher', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('# Parameters\ntarget = "local"\nrevision = "0012"\n',
                                         metadata={"tags": ["injected-parameters"]})
    banner = nbformat.v4.new_markdown_cell('<span style="color:red">An Exception was encountered</span>',
                                           metadata={"tags": ["papermill-error-cell-tag"]})
    shown = nbformat.v4.new_code_cell("s.status()", outputs=[
        nbformat.v4.new_output("display_data", data={
            "text/html": "<h3>Status</h3><table><thead><tr><th>set</th></tr></thead><tbody><tr><td>main</td>"
                         "</tr></tbody></table><script>alert('owned')</script>"
                         "<img src=x onerror=\"alert('img')\"><a href=\"javascript:alert(1)\">go</a>"
                         "<style>body{display:none}</style>",
            "text/plain": "status"}),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "Plot(...)"}),
    ])
    failing = nbformat.v4.new_code_cell("s.upgrade(revision, dry_run=dry_run)", outputs=[
        nbformat.v4.new_output("error", ename="MigrationFailed", evalue="Migration set 'main' failed at 0012",
                               traceback=["MigrationFailed: Migration set 'main' failed at 0012"])])
    nb.cells = [banner, nbformat.v4.new_markdown_cell("# Apply pending migrations"), params, injected,
                nbformat.v4.new_markdown_cell("## 1. Status"), shown,
                nbformat.v4.new_markdown_cell("## 2. Upgrade (alembic upgrade)"), failing]
    return nbformat.writes(nb).encode("utf-8")


def _record(outputs: Path, key: Path, runbook: str, target: str, outcome: str, minute: int) -> Path:
    now = STARTED.replace(minute=minute)
    run_id = records.new_run_id(runbook, target, now)
    run_dir = records.run_dir_for(outputs, run_id)
    (run_dir / protocol.ARTIFACTS_DIR).mkdir(parents=True)
    (run_dir / protocol.NOTEBOOK_FILE).write_bytes(_notebook(run_id))
    (run_dir / protocol.ARTIFACTS_DIR / "preview-main.sql").write_text("SELECT 1;\n", encoding="utf-8")
    statement = records.build_statement(
        run_dir, runbook_name=runbook, runbook_sha256="ab" * 32, parameters={"target": target,
                                                                              "revision": "0012"},
        operator="alice@example.com", host="laptop", started_at=now, finished_at=now, outcome=outcome,
        exit_status=0 if outcome == "succeeded" else 1, failing_step=None,
        database={"system_identifier": "7", "database": "app", "host": "db", "server_version": "18.1"},
        heads_before={"main": ["0011"], "ai": []}, heads_after={"main": ["0012"], "ai": []},
        migrations_sha256="cd" * 32, mode="papermill", extra={"target": target})
    records.write_record(run_dir, statement, key)
    return run_dir


def _writable(path: Path) -> Path:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    return path


@pytest.fixture
def outputs(tmp_path, key) -> Path:
    outputs = tmp_path / "outputs"
    _record(outputs, key, "apply", "production", "failed", 1)
    _record(outputs, key, "status", "staging", "succeeded", 2)
    _record(outputs, key, "apply", "staging", "succeeded", 3)
    return outputs


def _soup(path_or_text) -> BeautifulSoup:
    text = path_or_text.read_text(encoding="utf-8") if isinstance(path_or_text, Path) else path_or_text
    return BeautifulSoup(text, "html.parser")


def _table(soup: BeautifulSoup, selector: str) -> list[list[str]]:
    return [[c.get_text() for c in tr.find_all(["td", "th"])] for tr in soup.select(f"{selector} tr")]


def test_index_lists_each_record_with_its_facts_and_filters(outputs, allowed_signers, tmp_path):
    built = report.build_report(outputs, allowed_signers, tmp_path / "site")
    soup = _soup(built.index)
    rows = soup.select("#records tbody tr")
    assert [(r["data-runbook"], r["data-target"], r["data-outcome"], r["data-status"]) for r in rows] == [
        ("apply", "staging", "succeeded", "valid"), ("status", "staging", "succeeded", "valid"),
        ("apply", "production", "failed", "valid")]
    assert [c.get_text() for c in rows[2].find_all("td")][:7] == [
        "2026-11-23 22:01:01", "apply", "production", "alice@example.com", "failed", "ai: base; main: 0011 → 0012",
        "valid"]
    assert {s["id"]: [o["value"] for o in s.find_all("option")] for s in soup.select(".dbr-filters select")} == {
        "filter-target": ["", "production", "staging"], "filter-runbook": ["", "apply", "status"],
        "filter-outcome": ["", "failed", "succeeded"], "filter-status": ["", "valid"]}
    assert soup.find("script", src=True) is None and soup.find("link") is None  # nothing from a network
    assert [e.page for e in built.entries] == [f"records/{e.run_id}.html" for e in built.entries]


def test_record_page_shows_summary_parameters_and_failed_step(outputs, allowed_signers, tmp_path):
    run_dir = records.find_records(outputs)[0]
    entry, page = report.render_record(run_dir, allowed_signers, tmp_path)
    soup = _soup(page)
    assert soup.select_one("#record-status").get_text().startswith("Signature valid, signed by alice@example.com")
    [link] = soup.select("#failed-steps a")
    assert link.get_text() == "2. Upgrade (alembic upgrade)"
    [failed] = soup.select(".celltag_dbrunbook-failed")
    assert link["href"] == "#" + failed["id"]
    assert "MigrationFailed: Migration set 'main' failed at 0012" in soup.select_one("#failed-steps").get_text()
    assert _table(soup, "#parameters")[1:] == [
        ["target", '"local"', "str", '"local"', "database target"],
        ["revision", '"0012"', "str", '"heads"', "where to go"],
        ["dry_run", "false", "bool", "true", "change nothing"],
        ["run_id", json.dumps(entry.run_id), "str", '""', "set by the launcher"],
        ["record_dir", '"/x"', "str", '""', "set by the launcher"],
    ]
    # The parameters cells and papermill's banner are replaced by the tables, not shown as code or JSON.
    assert not soup.select(".celltag_parameters, .celltag_injected-parameters, .celltag_papermill-error-cell-tag")
    assert "# Parameters" not in page and '"default_parameters"' not in page
    summary = dict(_table(soup, "#run"))
    assert summary["revisions before → after"] == "ai: base; main: 0011 → 0012"
    assert summary["database"] == "app on db (PostgreSQL 18.1, system id 7)"
    assert summary["papermill"] == "2.7.0, 3.5 s"
    assert summary["outcome"] == "failed (exit status 1)"
    assert summary["signature"] == "valid, signed by alice@example.com"
    assert len(soup.select("img[src^='data:image/png;base64,']")) == 1


def test_record_page_is_sanitized(outputs, allowed_signers, tmp_path):
    _, page = report.render_record(records.find_records(outputs)[0], allowed_signers, tmp_path)
    soup = _soup(page)
    assert soup.find_all("script") == []
    assert "alert(" not in page and "display:none" not in page
    assert soup.select_one(".jp-RenderedHTML h3").get_text() == "Status"
    assert [th.get_text() for th in soup.select(".jp-RenderedHTML th")] == ["set"]


@pytest.mark.parametrize("markup, kept", [
    ("<h2 id='a'>Title</h2><p>text</p>", "<h2 id=\"a\">Title</h2><p>text</p>"),
    ("<table border='1' class='dataframe'><tr><th style='text-align: right;'>n</th></tr></table>",
     '<table border="1" class="dataframe"><tbody><tr><th style="text-align: right;">n</th></tr></tbody></table>'),
    ("<script>alert(1)</script>ok", "ok"),
    ("<style>p{}</style>ok", "ok"),
    ("<img src='x' onerror='alert(1)'>", "<img>"),
    ("<img src='data:image/svg+xml;base64,PHN2Zz4='>", "<img>"),
    ("<img src='data:image/png;base64,AAAA'>", '<img src="data:image/png;base64,AAAA">'),
    ("<a href='javascript:alert(1)'>x</a>", "<a>x</a>"),
    ("<a href='https://example.com/' onclick='x()'>x</a>", '<a href="https://example.com/">x</a>'),
    ("<iframe src='https://example.com'></iframe>ok", "ok"),
])
def test_sanitize_html(markup, kept):
    assert report.sanitize_html(markup) == kept


def test_tampered_record_gets_a_warning_page_without_its_notebook(outputs, allowed_signers, tmp_path):
    run_dir = records.find_records(outputs)[1]
    notebook = _writable(run_dir / protocol.NOTEBOOK_FILE)
    nb = json.loads(notebook.read_bytes())
    nb["cells"][5]["outputs"] = []
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    entry, page = report.render_record(run_dir, allowed_signers, tmp_path)
    soup = _soup(page)
    assert entry.status == "tampered" and entry.status_label == "tampered"
    assert soup.select_one("#record-warning").get_text().startswith("This record is TAMPERED")
    assert [li.get_text() for li in soup.select("#problems li")] == [
        "cell 5 (s.status()) differs from the signed record."]
    assert soup.select(".jp-Cell") == [] and "s.upgrade(" not in page


@pytest.mark.parametrize("damage, status, problem", [
    ("signature", "unsigned", "no statement.json.sig next to statement.json."),
    ("statement", "unsigned", "no statement.json in "),
])
def test_unsigned_record_gets_a_warning_page(outputs, allowed_signers, tmp_path, damage, status, problem):
    run_dir = records.find_records(outputs)[1]
    name = protocol.SIGNATURE_FILE if damage == "signature" else protocol.STATEMENT_FILE
    (run_dir / name).unlink()
    entry, page = report.render_record(run_dir, allowed_signers, tmp_path)
    soup = _soup(page)
    assert entry.status == status
    assert soup.select_one("#record-warning").get_text().startswith("This record is UNSIGNED")
    assert soup.select_one("#problems li").get_text().startswith(problem)
    assert soup.select(".jp-Cell") == []


def test_untrusted_record_gets_the_warning_page_only(outputs, tmp_path):
    nobody = tmp_path / "nobody"
    nobody.write_text("", encoding="utf-8")
    entry, page = report.render_record(records.find_records(outputs)[0], nobody, tmp_path)
    soup = _soup(page)
    assert entry.status_label == "untrusted key"
    assert soup.select_one("#record-warning").get_text().startswith("This record is UNTRUSTED KEY: its "
                                                                     "notebook is not shown")
    assert "is not trusted for 'dbrunbook-record'" in soup.select_one("#problems li").get_text()
    assert soup.select(".jp-Cell") == [] and soup.select("#record-status") == []
    assert b"s.status()" not in page.encode()  # nothing of the notebook's code


def test_rendered_bytes_are_the_bytes_checked_against_the_statement(outputs, allowed_signers, tmp_path,
                                                                    monkeypatch):
    """A notebook swapped back to its signed content after it was read is still shown as tampered."""
    run_dir = records.find_records(outputs)[0]
    notebook = _writable(run_dir / protocol.NOTEBOOK_FILE)
    genuine = notebook.read_bytes()
    notebook.write_bytes(genuine.replace(b"s.status()", b"s.hacked()"))
    real_verify = records.verify_record

    def verify_after_swap(path, signers):
        notebook.write_bytes(genuine)  # the file is genuine again by the time it is checked
        return real_verify(path, signers)

    monkeypatch.setattr(records, "verify_record", verify_after_swap)
    entry, page = report.render_record(run_dir, allowed_signers, tmp_path)
    assert entry.status == "tampered"
    assert "s.hacked()" not in page and "s.status()" not in page
    assert _soup(page).select_one("#record-warning") is not None


def test_rebuild_removes_pages_of_records_that_are_gone(outputs, allowed_signers, tmp_path):
    site = tmp_path / "site"
    first = report.build_report(outputs, allowed_signers, site)
    gone = records.find_records(outputs)[0]
    for path in sorted(gone.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    gone.rmdir()
    second = report.build_report(outputs, allowed_signers, site)
    assert len(first.entries) == 3 and len(second.entries) == 2
    assert sorted(p.name for p in (site / "records").iterdir()) == sorted(f"{e.run_id}.html"
                                                                         for e in second.entries)


def test_default_folder_is_outputs_report_and_is_not_taken_for_a_record(outputs, allowed_signers):
    built = report.build_report(outputs, allowed_signers)
    assert built.out_dir == outputs / "report" and built.index == outputs / "report" / "index.html"
    assert len(records.find_records(outputs)) == 3
