"""A DBAPI statement and its parameters rendered as the SQL the server was asked to run, literals put in.

The capture records what a revision executes through the driver: a statement with placeholders in the
driver's paramstyle and its parameters apart. A reviewer, the lint and the preflight read SQL, so each
execution is rendered with its parameters as PostgreSQL literals (one statement per row of an executemany,
up to ``MAX_ROWS``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import uuid
from typing import Any

__all__ = ["MAX_ROWS", "literal", "render_execution", "render_statement"]

#: Statements of one executemany() rendered at most; the rest is counted in a comment.
MAX_ROWS = 100


def literal(value: Any) -> str:
    """A Python value as a PostgreSQL literal (strings quoted by doubling quotes, bytes as bytea hex)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, decimal.Decimal)):
        return str(value)
    if isinstance(value, float):
        finite = value == value and value not in (float("inf"), float("-inf"))
        return repr(value) if finite else f"'{value}'::float8"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"'\\x{bytes(value).hex()}'::bytea"
    if isinstance(value, (list, tuple)):
        return "ARRAY[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return _quote(json.dumps(value, sort_keys=True, default=str)) + "::jsonb"
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _quote(value.isoformat())
    if isinstance(value, uuid.UUID):
        return _quote(str(value))
    return _quote(str(value))


def _quote(text: str) -> str:
    # standard_conforming_strings is on (PostgreSQL's default since 9.1): only quotes need doubling; a NUL
    # cannot be in a PostgreSQL string at all.
    return "'" + text.replace("'", "''").replace("\x00", "") + "'"


_PYFORMAT = re.compile(r"%\(([^)]+)\)s|%s|%%")
_DOLLAR = re.compile(r"\$(\d+)")
_QMARK = re.compile(r"\?")
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def render_statement(statement: str, parameters: Any, paramstyle: str) -> str:
    """The DBAPI statement with its parameters put in as literals: what the server was asked to run.

    Args:
        statement: as handed to the driver (placeholders in the driver's ``paramstyle``).
        parameters: a mapping or a sequence (one execution's parameters), or None.
        paramstyle: the dialect's: pyformat/format (psycopg, psycopg2), numeric_dollar (asyncpg), qmark, named.
    """
    params = parameters if parameters is not None else ()
    if paramstyle in ("pyformat", "format"):
        positional = iter(params) if not isinstance(params, dict) else iter(())

        def sub(match: re.Match) -> str:
            if match.group(0) == "%%":
                return "%"
            if match.group(1) is not None:
                return literal(params[match.group(1)]) if isinstance(params, dict) else match.group(0)
            return literal(next(positional, None))

        return _PYFORMAT.sub(sub, statement)
    if paramstyle in ("numeric_dollar", "numeric"):
        pattern = _DOLLAR if paramstyle == "numeric_dollar" else re.compile(r"(?<!:):(\d+)")
        values = list(params)
        return pattern.sub(lambda m: literal(values[int(m.group(1)) - 1]) if int(m.group(1)) <= len(values)
                           else m.group(0), statement)
    if paramstyle == "qmark":
        positional = iter(params)
        return _QMARK.sub(lambda m: literal(next(positional, None)), statement)
    if paramstyle == "named" and isinstance(params, dict):
        return _NAMED.sub(lambda m: literal(params[m.group(1)]) if m.group(1) in params else m.group(0),
                          statement)
    return statement


def render_execution(statement: str, parameters: Any, paramstyle: str, executemany: bool) -> list[str]:
    """One execution as SQL statements ending in ';': one per parameter set of an executemany (``MAX_ROWS``)."""
    sets = list(parameters) if executemany and parameters is not None else [parameters]
    out = [render_statement(statement, p, paramstyle).strip().rstrip(";") + ";" for p in sets[:MAX_ROWS]]
    if len(sets) > MAX_ROWS:
        out.append(f"-- (executed {len(sets)} times; the first {MAX_ROWS} are shown)")
    return out
