"""The fleet pages of the HTML archive: one page per roll-up, a table per wave (failures first), durations.

Built from the verified roll-up only (``fleet_rollup.verify_rollup``): the banner says whether the roll-up
and every child record it names check out; each target links to its record's page in ``records/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dbrunbook.execution import fleet_rollup
from dbrunbook.views import plots
from dbrunbook.views.record_page import INDEX_FILE, PAGES_DIR, heads_text, utc_when
from dbrunbook.views.report_style import outcome_badge, page_html
from dbrunbook.views.tables import escape_html

__all__ = ["FLEET_PAGES_DIR", "FleetPage", "write_fleet_pages"]

FLEET_PAGES_DIR = "fleets"


@dataclass(frozen=True)
class FleetPage:
    """One fleet page as the index lists it."""

    fleet_id: str
    page: str  # relative to the report folder
    status: str  # of the roll-up and its children, as verify_rollup says
    runbook: str
    group: str
    started_at: str
    tally: str  # "succeeded 9, failed 1"
    stopped: str


def _pairs(values: object) -> str:
    """``{"dry_run": False}`` as ``dry_run false``; "none" when empty."""
    if not isinstance(values, dict) or not values:
        return "none"
    return ", ".join(f"{k} {str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(values.items()))


def _wave_table(entries: list[dict]) -> str:
    ordered = sorted(entries, key=lambda t: (t["outcome"] in ("succeeded", "skipped", "not-started"),
                                             t["outcome"] != "not-started"))
    rows = []
    for t in ordered:
        run = (f'<a href="../{PAGES_DIR}/{escape_html(t["run_id"])}.html">{escape_html(t["run_id"])}</a>'
               if t.get("run_id") else "-")
        rows.append(f"<tr><td>{escape_html(t['target'])}</td><td>{outcome_badge(t['outcome'])}</td><td>{run}</td>"
                    f"<td>{float(t.get('seconds') or 0):.1f}</td>"
                    f"<td>{escape_html(heads_text(t.get('heads_before'), t.get('heads_after')))}</td>"
                    f"<td>{escape_html(t.get('error') or '')}</td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("target", "outcome", "run", "seconds", "heads before → after",
                                             "error"))
    return f'<table class="dbr-table"><tr>{head}</tr>{"".join(rows)}</table>'


def render_fleet_page(check: fleet_rollup.RollupCheck) -> str:
    """The HTML page of one checked roll-up."""
    p = check.predicate or {}
    targets = p.get("targets") or []
    banner = (f'<div class="dbr-banner {"valid" if check.ok else "tampered"}">roll-up {escape_html(check.status)}'
              + "".join(f"<br>{escape_html(problem)}" for problem in check.problems) + "</div>")
    shown = {**p, "parameters": _pairs(p.get("parameters")), "tally": _pairs(p.get("tally")),
             "started_at": f"{utc_when(p.get('started_at'))} UTC",
             "finished_at": f"{utc_when(p.get('finished_at'))} UTC",
             "stopped": p.get("stopped") or "no: every target ran"}
    facts = "".join(f"<tr><th>{escape_html(k.replace('_', ' '))}</th><td>{escape_html(shown.get(k))}</td></tr>"
                    for k in ("runbook", "group", "group_kind", "parameters", "waves", "parallel", "max_failures",
                              "operator", "started_at", "finished_at", "stopped", "tally"))
    waves = sorted({t["wave"] for t in targets})
    sections = "".join(f"<h2>Wave {w}</h2>" + _wave_table([t for t in targets if t["wave"] == w]) for w in waves)
    timed = [{"revision": t["target"], "seconds": t["seconds"]} for t in targets
             if t.get("run_id") and t["outcome"] != "skipped"]
    chart = plots.Plots((plot,))._repr_html_() if isinstance(plot := plots.durations_chart(timed), plots.Plot) \
        else plot._repr_html_()
    body = (f'<p><a href="../{INDEX_FILE}">← all records</a></p><h1>Fleet {escape_html(check.fleet_id)}</h1>'
            f'{banner}<table class="dbr-table">{facts}</table>'

            f"{sections}<h2>Seconds per target</h2>{chart}")
    return page_html(f"fleet {check.fleet_id}", body)


def write_fleet_pages(outputs_dir: Path, allowed_signers: Path, out_dir: Path) -> list[FleetPage]:
    """Write ``out_dir/fleets/<fleet-id>.html`` for every roll-up under ``outputs_dir``; returns the index's list."""
    pages = []
    folder = Path(out_dir) / FLEET_PAGES_DIR
    for rollup in fleet_rollup.find_rollups(outputs_dir):
        folder.mkdir(parents=True, exist_ok=True)
        check = fleet_rollup.verify_rollup(rollup, allowed_signers)
        (folder / f"{rollup.name}.html").write_text(render_fleet_page(check), encoding="utf-8")
        p = check.predicate or {}
        tally = _pairs(p.get("tally"))
        pages.append(FleetPage(rollup.name, f"{FLEET_PAGES_DIR}/{rollup.name}.html", check.status,
                               str(p.get("runbook") or "-"), str(p.get("group") or "-"),
                               str(p.get("started_at") or "-"), tally, str(p.get("stopped") or "")))
    for stale in folder.glob("*.html") if folder.is_dir() else ():
        if stale.stem not in {p.fleet_id for p in pages}:
            stale.unlink()
    return pages
