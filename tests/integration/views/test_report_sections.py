"""The report's pages for an interactive record and for an approved preview, in a real headless Chromium.

An interactive record (``dbrunbook open`` … ``seal``, a cell edited in between) shows its mode, the edited cell and
each code cell's execution count and start time, not papermill's rows; a preview record shows its approvals with
who approved, when, the note and whether each one checks out. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from dbrunbook.config import load_config
from dbrunbook.execution.runner import kernel_for_this_interpreter, prepare_runbook, run_runbook, seal
from dbrunbook.records import signing
from dbrunbook.safety import approvals
from dbrunbook.views import report
from tests.integration.views.test_report_browser import ARTIFACTS
from tests.integration.views.test_report_browser import browser as browser
from tests.projects import throwaway_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pages(pg_admin_url, tmp_path_factory):
    """An interactive-edited status record and an approved preview record, and their HTML archive."""
    with throwaway_project(pg_admin_url, tmp_path_factory.mktemp("sections")) as (proj, config):
        path = prepare_runbook("status", config=config)
        nb = nbformat.read(path, as_version=4)
        index = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("s.history("))
        nb.cells[index].source = "s.history(migration_set)\nprint('looks fine')"
        NotebookClient(nb, kernel_name=kernel_for_this_interpreter(),
                       resources={"metadata": {"path": str(proj.root)}}).execute()
        nbformat.write(nb, path)  # what JupyterLab's save writes
        interactive = seal(path.parent, config=config)

        preview = run_runbook("preview", target="local", config=config)
        bob = signing.generate_key(tmp_path_factory.mktemp("bob") / "id_ed25519", "bob@example.com")
        signing.add_allowed_signer(config.allowed_signers, "bob@example.com", signing.public_key_line(bob))
        approvals.approve(load_config(proj.config_path), preview.run_id, note="checked the SQL", key_path=bob)
        built = report.build_report(config.outputs_dir, config.allowed_signers, tmp_path_factory.mktemp("site"))
        yield built, interactive, preview, index


@pytest.fixture(scope="module")
def approved(pg_admin_url, tmp_path_factory):
    """A preview approved by bob, a second approval file edited after signing, and a dry apply that names it."""
    with throwaway_project(pg_admin_url, tmp_path_factory.mktemp("approved")) as (proj, config):
        preview = run_runbook("preview", target="local", config=config)
        bob = signing.generate_key(tmp_path_factory.mktemp("bob") / "id_ed25519", "bob@example.com")
        signing.add_allowed_signer(config.allowed_signers, "bob@example.com", signing.public_key_line(bob))
        good = approvals.approve(load_config(proj.config_path), preview.run_id, note="checked the SQL", key_path=bob)
        forged = good.with_name("20990101T000000000000Z-bob@example.com.json")
        forged.write_bytes(good.read_bytes().replace(b"checked the SQL", b"looked at it"))
        forged.with_name(forged.name + ".sig").write_bytes(good.with_name(good.name + ".sig").read_bytes())
        applied = run_runbook("apply", target="local", config=config,
                              parameters={"approved_preview": preview.run_id})
        assert applied.outcome == "succeeded", applied.as_json()
        built = report.build_report(config.outputs_dir, config.allowed_signers, tmp_path_factory.mktemp("site"))
        yield built, preview, applied


def test_an_interactive_record_shows_its_mode_edited_cell_and_cell_runs(browser, pages):
    built, interactive, _preview, index = pages
    browser.get(built.page(interactive.run_id).as_uri())
    section = browser.text(browser.find("#interactive"))
    assert "Mode interactive-edited: run in JupyterLab with code changed after 'dbrunbook open'" in section
    assert "Run by tester@dbrunbook, who sealed it with their key." in section
    assert browser.text(browser.find("#changed-cells")) == (
        f"cell {index} (s.history(migration_set)) was edited after 'dbrunbook open'")
    rows = browser.script("return Array.from(document.querySelectorAll('#cell-runs tr')).slice(1)"
                          ".map(r => Array.from(r.cells).map(c => c.textContent));")
    assert [r[4] for r in rows] == ["ran"] * len(rows) and len(rows) >= 5
    assert [int(r[2]) for r in rows] == list(range(1, len(rows) + 1))  # the order they ran in
    assert all(r[3].startswith("20") for r in rows)  # nbclient records when each cell started
    assert [r[1] for r in rows if int(r[0]) == index] == ["s.history(migration_set)"]
    run = browser.text(browser.find("#run"))
    assert "papermill" not in run and "interactive-edited" in run
    browser.script("document.querySelector('#interactive').scrollIntoView({block: 'start'});")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "report-interactive.png")


def test_a_preview_record_shows_its_approvals(browser, pages):
    built, _interactive, preview, _index = pages
    browser.get(built.page(preview.run_id).as_uri())
    rows = browser.script("return Array.from(document.querySelectorAll('#approvals tr')).slice(1)"
                          ".map(r => Array.from(r.cells).map(c => c.textContent));")
    assert len(rows) == 1
    approver, status, approved_at, note, problems, name = rows[0]
    assert (approver, status, note, problems) == ("bob@example.com", "valid", "checked the SQL", "-")
    assert approved_at.startswith("20") and name.endswith(".json")
    assert "papermill" in browser.text(browser.find("#run"))  # a papermill run keeps papermill's rows
    browser.script("document.querySelector('#approvals').scrollIntoView({block: 'start'});")
    browser.screenshot(ARTIFACTS / "report-approvals.png")


def test_a_record_without_approvals_has_no_approvals_section(browser, pages):
    built, interactive, _preview, _index = pages
    browser.get(built.page(interactive.run_id).as_uri())
    assert browser.find_all("#approvals") == []




def _rows(browser, selector: str) -> list[list[str]]:
    return browser.script(f"return Array.from(document.querySelectorAll('{selector} tr')).slice(1)"
                          ".map(r => Array.from(r.cells).map(c => c.textContent));")


def test_the_index_lists_approved_previews_and_links_their_page(browser, approved):
    built, preview, applied = approved
    browser.get(built.index.as_uri())
    assert _rows(browser, "#approved-previews") == [["bob@example.com", "1", applied.run_id, preview.run_id]]
    link = browser.find(f'#approved-previews a[href="approvals/{preview.run_id}.html"]')
    assert browser.text(link) == preview.run_id
    browser.screenshot(ARTIFACTS / "report-index-approvals.png")


def test_an_approval_page_shows_each_approval_checked_and_the_records_that_used_it(browser, approved):
    built, preview, applied = approved
    browser.get((built.out_dir / "approvals" / f"{preview.run_id}.html").as_uri())
    banner = browser.find("#approval-status")
    # One approval checks out, the edited copy does not: the banner is a warning, not the green one.
    assert browser.script("return document.querySelector('#approval-status').className;") == "dbr-banner untrusted"
    assert browser.text(banner).startswith("Approved by bob@example.com; 1 other approval file(s) do not check out")
    rows = _rows(browser, "#approval-list")
    assert [(r[1], r[3]) for r in rows] == [("valid", "checked the SQL"), ("tampered", "looked at it")]
    assert rows[0][4] == rows[1][4] and len(rows[0][4]) == 12  # both name the same SQL digest (its start shown)
    full = browser.script("return document.querySelector('#approval-list code').title;")
    assert len(full) == 64 and full.startswith(rows[0][4])
    assert "signature" in rows[1][5].lower()
    preview_link = browser.find(f'#approved-preview a[href="../records/{preview.run_id}.html"]')
    assert browser.text(preview_link) == preview.run_id
    used = _rows(browser, "#used-by")
    assert used == [[applied.run_id, "apply", "local", "tester@dbrunbook", "succeeded", "valid", "yes"]]
    browser.screenshot(ARTIFACTS / "report-approval-page.png")
    # The preview's own page links back to its approval page.
    browser.get(built.page(preview.run_id).as_uri())
    assert browser.find_all(f'#approvals a[href="../approvals/{preview.run_id}.html"]')
