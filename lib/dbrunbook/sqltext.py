"""Reading rendered SQL: split a script into statements, the way PostgreSQL's parser sees their boundaries.

One scanner for the lint, the preflight, troubleshoot and the deploy checks: semicolons inside quotes, quoted
names, dollar-quoted bodies and comments do not end a statement.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$[A-Za-z_]*\$")


@dataclass(frozen=True)
class Statement:
    """One statement: where it is in the script, its text as written, and its code without comments."""

    start: int
    end: int
    text: str
    code: str

    @property
    def flat(self) -> str:
        """The code on one line, runs of white space folded: what pattern rules match against."""
        return " ".join(self.code.split())


def split_statements(sql: str) -> list[Statement]:
    """Split SQL at top-level semicolons; statements that are only comments or blanks are dropped."""
    out: list[Statement] = []
    code: list[str] = []
    i, start, n = 0, 0, len(sql)

    def close(end: int) -> None:
        text = sql[start:end]
        body = "".join(code).strip().rstrip(";").strip()
        if body:
            lead = len(text) - len(text.lstrip())
            out.append(Statement(start + lead, end, text.strip(), body))

    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
            code.append(" ")
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            code.append(" ")
        elif c in ("'", '"'):
            j = i + 1
            while j < n and not (sql[j] == c and not sql.startswith(c * 2, j)):
                j += 2 if sql.startswith(c * 2, j) else 1
            code.append(sql[i:j + 1])
            i = j + 1
        elif c == "$" and (tag := _DOLLAR_TAG.match(sql, i)):
            j = sql.find(tag.group(0), tag.end())
            j = n if j < 0 else j + len(tag.group(0))
            code.append(sql[i:j])
            i = j
        elif c == ";":
            code.append(";")
            close(i + 1)
            code, start, i = [], i + 1, i + 1
        else:
            code.append(c)
            i += 1
    close(n)
    return out
