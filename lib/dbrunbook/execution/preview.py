"""The SQL of a pending range as a review reads it: ``Preview``, per migration set and revision, with its digest.

``Session.preview`` and ``Session.downgrade_sql`` build one; ``apply`` recomputes its sha256 to prove that what
runs is what was reviewed, and the notebook shows the first, last, biggest and online-only revisions in full.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pandas as pd

from dbrunbook.postgres import sqltext


@dataclass
class Preview:
    """The SQL of a pending range, per migration set and revision, with the digest a review approves.

    Each revision's SQL is rendered offline, or, for a revision that cannot be (online-only), captured on a
    scratch database; ``as_frame`` says which in its ``sql`` column, and the digest covers both.
    """

    steps: dict[str, list] = field(default_factory=dict)  # set name -> [SqlStep]
    files: dict[str, str] = field(default_factory=dict)  # artifact name -> sha256

    @property
    def sha256(self) -> str:
        """Digest of all rendered SQL, in set order: what `apply` recomputes to prove nothing changed."""
        h = hashlib.sha256()
        for name in sorted(self.steps):
            for step in self.steps[name]:
                h.update(f"{name}:{step.revision}\n".encode())
                if getattr(step, "online_only", False):
                    # A captured revision's SQL and an uncaptured one's empty SQL must never digest alike.
                    h.update(f"online-only:{step.source}\n".encode())
                h.update(step.sql.encode())
        return h.hexdigest()

    def file_text(self, name: str) -> str:
        """The text of artifacts/preview-NAME.sql: each revision's SQL under a header naming it."""
        return "".join(_step_text(name, s) for s in self.steps.get(name, []))

    def as_frame(self) -> pd.DataFrame:
        rows = [
            {"migration_set": name, "revision": s.revision, "description": s.message,
             "sql": getattr(s, "status", "offline"), "statements": _count_statements(s.sql),
             "notes": s.notes.strip()[:200] or None,
             "online_only": (getattr(s, "reason", "") + (f" — not captured: {s.capture_error}"
                                                          if getattr(s, "capture_error", "") else "")) or None}
            for name, steps in self.steps.items() for s in steps
        ]
        return pd.DataFrame(rows, columns=["migration_set", "revision", "description", "sql", "statements", "notes",
                                           "online_only"])

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {len(steps)}" for name, steps in self.steps.items())
        return f"Preview({counts or 'nothing pending'}; sha256 {self.sha256})"

    def _repr_html_(self) -> str:
        from dbrunbook.views import summaries

        if not any(self.steps.values()):
            return "<p><b>Nothing pending</b>: every migration set is at its head.</p>"
        from dbrunbook.views.tables import sql_html

        frame = self.as_frame()
        parts = [f"<p>Preview sha256 <code>{self.sha256}</code></p>",
                 summaries.frame_html(frame, summaries.Shown(by="statements", totals=(
                     f"{len(frame):,} revision(s), {int(frame['statements'].sum()):,} statement(s)")))]
        for name, steps in self.steps.items():
            # The first, last and biggest revisions in full, and those that need a reviewer most: online-only.
            shown = summaries.steps_shown(steps, key=lambda s: len(s.sql)) | set(
                [i for i, s in enumerate(steps) if getattr(s, "online_only", False)][:summaries.TOP])
            for i, s in enumerate(steps):
                if i not in shown:
                    continue
                if i - 1 not in shown and i > 0:
                    parts.append(f"<p>… {summaries.gap(shown, i):,} more revision(s): their SQL is in "
                                 f"artifacts/preview-{name}.sql</p>")
                sql = sql_html(s.sql)
                status = getattr(s, "status", "offline")
                why = (f"<p><i>{getattr(s, 'problem', '').replace('&', '&amp;').replace('<', '&lt;')}</i></p>"
                       if getattr(s, "online_only", False) else "")
                parts.append(f"<h4>{name}: {s.revision} — {s.message} ({status})</h4>{why}{sql}")
        return "\n".join(parts)


def _step_text(name: str, step) -> str:
    head = f"-- {name} {step.revision}: {step.message}\n"
    if getattr(step, "online_only", False):
        head += f"-- {step.problem}\n"
    return f"{head}{step.sql}\n"


def _count_statements(sql: str) -> int:
    return len(sqltext.split_statements(sql))
