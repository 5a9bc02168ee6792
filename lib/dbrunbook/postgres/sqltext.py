"""Reading rendered SQL: split a script into statements where PostgreSQL's parser sees their boundaries.

One splitter for the lint, the preflight, troubleshoot and the deploy checks. The boundaries come from
PostgreSQL's own grammar (pglast, i.e. libpg_query), so semicolons inside literals of every kind (``'it''s'``,
``E'it\\'s'``, ``$fn1$ … $fn1$``), quoted names and comments never end a statement. Alembic's offline SQL can
hold text that is not SQL (what a migration printed): a statement the parser rejects is retried without its
leading lines, which are then kept apart as ``noise``; what still does not parse is kept with the parser's
message in ``error`` (callers report it as "could not parse", never guess at it). Only text PostgreSQL's
scanner cannot even tokenize (an unterminated literal) falls back to a small hand-written splitter.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from pglast import parser
from pglast.parser import ParseError

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$")
_COMMENT_TOKENS = ("SQL_COMMENT", "C_COMMENT")
_MAX_NOISE_LINES = 20
#: Code whose white space is only ever between tokens: printable ASCII and PostgreSQL's own white space, no
#: quote or dollar sign (str.split also splits on characters PostgreSQL does not count as white space).
_PLAIN_CODE = re.compile(r"[^'\"$\x00-\x08\x0e-\x1f\x7f-\U0010ffff]*\Z")


@dataclass(frozen=True)
class Statement:
    """One statement: where it is in the script, its text as written, and its code without comments.

    ``error`` is the parser's message when PostgreSQL's grammar rejects the statement (empty when it parses);
    ``noise`` is non-SQL text found before it (a migration's print in offline mode) and left out of ``code``.
    """

    start: int
    end: int
    text: str
    code: str
    error: str = ""
    noise: str = ""

    @functools.cached_property
    def flat(self) -> str:
        """The code on one line, runs of white space between tokens folded (literals keep theirs, so a
        ``WHERE name = 'a  b'`` read from it still means what it says)."""
        if _PLAIN_CODE.match(self.code) and "--" not in self.code and "/*" not in self.code:
            # No literal, quoted name or comment: every run of white space lies between two tokens, and
            # splitting on it is what the scanner gives (at 1,000 revisions, a fifth of the lint's time).
            return " ".join(self.code.split())
        return scanned_flat(self.code)

    @property
    def parsed(self) -> bool:
        return not self.error


def scanned_flat(code: str) -> str:
    """``code`` on one line by PostgreSQL's scanner: a space wherever white space or a comment parted two
    tokens, the tokens as written."""
    try:
        tokens = parser.scan(code)
    except ParseError:
        return " ".join(code.split())
    out, at = [], 0
    for tok in tokens:
        if tok.start > at:
            out.append(" ")
        out.append(code[tok.start:tok.end + 1])
        at = tok.end + 1
    return "".join(out).strip()


def split_statements(sql: str) -> list[Statement]:
    """Split SQL into statements; statements that are only comments or blanks are dropped.

    Remembered per text: lint, preflight and the loss guard each split the same preview (a 1,000-revision
    preview is 1,000 texts), and a Statement keeps its ``flat`` once computed.
    """
    return list(_split(sql))


@functools.lru_cache(maxsize=4096)
def _split(sql: str) -> tuple[Statement, ...]:
    spans: list[tuple[int, int]] | None
    try:
        ends = [s.stop for s in parser.split(sql, with_parser=True, only_slices=True)]
        # The parser's locations skip leading comments; a statement's text keeps them (the head of a step).
        spans = [(_after(sql, ends[i - 1]) if i else 0, b) for i, b in enumerate(ends)]
        checked = True
    except ParseError:
        spans, checked = _scanner_spans(sql), False
    if spans is None:
        spans, checked = _hand_spans(sql), False
    return tuple(s for s in (_statement(sql, a, b, checked=checked) for a, b in spans) if s is not None)


def _after(sql: str, b: int) -> int:
    return b + 1 if sql.startswith(";", b) else b


def _scanner_spans(sql: str) -> list[tuple[int, int]] | None:
    """Statement spans cut at the top-level semicolons PostgreSQL's scanner finds; None if it cannot scan."""
    try:
        tokens = parser.scan(sql)
    except ParseError:
        return None
    spans, start = [], 0
    for tok in tokens:
        if tok.name == "ASCII_59":  # ';'
            spans.append((start, tok.start))
            start = tok.start + 1
    spans.append((start, len(sql)))
    return spans


def _strip_comments(text: str) -> str:
    """``text`` with its comments blanked, by PostgreSQL's scanner (the hand rule when it cannot scan)."""
    if "--" not in text and "/*" not in text:
        return text  # no comment can start anywhere in it
    try:
        tokens = parser.scan(text)
    except ParseError:
        return _hand_code(text)
    out, at = [], 0
    for tok in tokens:
        if tok.name in _COMMENT_TOKENS:
            out.append(text[at:tok.start])
            out.append(" ")
            at = tok.end + 1
    out.append(text[at:])
    return "".join(out)


def _statement(sql: str, a: int, b: int, *, checked: bool) -> Statement | None:
    """The statement in ``sql[a:b]`` (b excludes its semicolon), parsed on its own unless ``checked``."""
    raw = sql[a:b]
    code = _strip_comments(raw).strip(" \t\r\n\f;")
    if not code:
        return None
    end = _after(sql, b)
    lead = len(raw) - len(raw.lstrip(" \t\r\n\f;"))
    text = sql[a + lead:end].strip()
    if checked:
        return Statement(a + lead, end, text, code)
    error = _parse_error(code)
    if not error:
        return Statement(a + lead, end, text, code)
    lines = code.splitlines(keepends=True)
    for n in range(1, min(len(lines), _MAX_NOISE_LINES + 1)):
        rest = "".join(lines[n:]).strip()
        if rest and not _parse_error(rest):
            noise = "".join(lines[:n]).strip()
            return Statement(a + lead, end, text, rest, noise=noise)
    return Statement(a + lead, end, text, code, error=error)


def _parse_error(code: str) -> str:
    try:
        parser.parse_sql(code)
    except ParseError as err:
        return str(err)
    return ""


# --- the fallback: text PostgreSQL's scanner rejects -------------------------------------------------------
def _hand_spans(sql: str) -> list[tuple[int, int]]:
    """Spans cut at semicolons outside quotes, dollar quotes and comments (for text that cannot be scanned)."""
    spans, start = [], 0
    for i in _hand_walk(sql, want="semicolons"):
        spans.append((start, i))
        start = i + 1
    spans.append((start, len(sql)))
    return spans


def _hand_code(text: str) -> str:
    return "".join(_hand_walk(text, want="code"))


def _hand_walk(sql: str, *, want: str):
    """Yield semicolon offsets (``want="semicolons"``) or the pieces of code without comments."""
    i, n = 0, len(sql)
    code = want == "code"
    while i < n:
        c = sql[i]
        if sql.startswith("--", i) or sql.startswith("/*", i):
            j = sql.find("\n" if c == "-" else "*/", i + 2)
            i = n if j < 0 else j + (1 if c == "-" else 2)
            if code:
                yield " "
        elif c in ("'", '"'):
            escapes = c == "'" and i > 0 and sql[i - 1] in "eE" and not (i > 1 and (sql[i - 2].isalnum()
                                                                                  or sql[i - 2] == "_"))
            j = i + 1
            while j < n and not (sql[j] == c and not sql.startswith(c * 2, j)):
                j += 2 if (sql.startswith(c * 2, j) or (escapes and sql[j] == "\\")) else 1
            if code:
                yield sql[i:j + 1]
            i = j + 1
        elif c == "$" and (tag := _DOLLAR_TAG.match(sql, i)) and not (i > 0 and (sql[i - 1].isalnum()
                                                                                 or sql[i - 1] == "_")):
            j = sql.find(tag.group(0), tag.end())
            j = n if j < 0 else j + len(tag.group(0))
            if code:
                yield sql[i:j]
            i = j
        else:
            if c == ";" and not code:
                yield i
            elif code:
                yield c
            i += 1
