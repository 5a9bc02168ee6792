"""Connection URLs read without decoding them: split, checked, parsed, masked, pointed at another database.

Passwords are pasted into URLs unencoded (with ``/ ? # :`` or ``@`` in them), and both libpq and SQLAlchemy
then split them at the wrong place and quote a piece of the password in their errors. So dbrunbook splits a
URL itself, refuses one the parsers would misread, and never shows a URL but masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

import sqlalchemy

from dbrunbook.config import normalize_url
from dbrunbook.errors import InvalidUrl

MASK = "***"


@dataclass(frozen=True)
class UrlParts:
    scheme: str  # "postgresql+psycopg://"
    userinfo: str | None  # "user:password" (without "@"), None when absent
    hosts: str  # "h1:5432,h2" or "" for a unix socket / default
    path: str  # "/dbname" or ""
    tail: str  # "?query#fragment" or ""

    def render(self) -> str:
        user = f"{self.userinfo}@" if self.userinfo is not None else ""
        return f"{self.scheme}{user}{self.hosts}{self.path}{self.tail}"


def split_url(url: str) -> UrlParts | None:
    """Split a libpq or SQLAlchemy URL without decoding it; None for a keyword/value conninfo string.

    Passwords are often pasted unencoded, with ``/ ? # :`` or even ``@`` in them, so the user information is
    taken up to the last ``@`` that comes before the query string, the query string starting at the first
    ``?`` after the first ``@``. Masking errs on the side of hiding too much.
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)", url)
    if not match:
        return None
    scheme, rest = match.group(1), url[match.end():]
    userinfo = None
    first_at = rest.find("@")
    if first_at >= 0:
        query_start = rest.find("?", first_at)
        last_at = rest.rfind("@", 0, query_start if query_start >= 0 else len(rest))
        userinfo, rest = rest[:last_at], rest[last_at + 1:]
    end = len(rest)
    for sep in "/?#":
        i = rest.find(sep)
        if i >= 0:
            end = min(end, i)
    hosts, rest = rest[:end], rest[end:]
    tail_start = len(rest)
    for sep in "?#":
        i = rest.find(sep)
        if i >= 0:
            tail_start = min(tail_start, i)
    return UrlParts(scheme, userinfo, hosts, rest[:tail_start], rest[tail_start:])


_QUERY_SECRET = re.compile(r"(?i)([?&](?:ssl)?password=)[^&#]*")


CONNINFO_SECRET = re.compile(r"(?i)(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|\S*)")


def mask_url(url: str | sqlalchemy.URL) -> str:
    """Return the URL with every password replaced by ``***``: user information, ``?password=``, conninfo.

    Works on libpq URLs (``postgresql://u:pw@h1,h2/db``), SQLAlchemy URLs (``postgresql+psycopg://...``)
    and libpq keyword/value strings (``host=h password=pw``). The result is safe to print and to record.
    """
    if isinstance(url, sqlalchemy.URL):
        return url.render_as_string(hide_password=True)
    parts = split_url(url)
    if parts is None:
        return CONNINFO_SECRET.sub(lambda m: m.group(1) + MASK, url)
    userinfo = parts.userinfo
    if userinfo is not None and ":" in userinfo:
        user, password = userinfo.split(":", 1)
        userinfo = f"{user}:{MASK}" if password else userinfo
    tail = _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, parts.tail)
    return UrlParts(parts.scheme, userinfo, parts.hosts, parts.path, tail).render()


def check_url(url: str) -> str:
    """Return ``url`` unchanged when libpq and SQLAlchemy will read it as written.

    A password pasted unencoded (``postgresql://u:p@ss/w0rd@host/db``) is split at the wrong ``@`` or ``/``
    by both parsers, and their errors then quote a piece of it (``invalid literal for int(): 'w'``).

    Raises:
        InvalidUrl: the message shows the URL masked as dbrunbook reads it, never any part of the password.
    """
    parts = split_url(url)
    if parts is None:
        return url  # a libpq keyword/value string: nothing here parses it
    userinfo = parts.userinfo or ""
    # SQLAlchemy reads the password up to the first "@" and the user name up to the first "/" or ":".
    if "@" in userinfo or "/" in userinfo.split(":", 1)[0]:
        raise InvalidUrl(mask_url(url), "its user name or password holds an '@' (or the user name a '/'), "
                                        "which must be percent-encoded. Encode it, e.g. with python3 -c \"import "
                                        "urllib.parse,getpass; print(urllib.parse.quote(getpass.getpass(), "
                                        "safe=''))\", or keep the password in ~/.pgpass or PGPASSWORD.")
    parse_url(normalize_url(url))
    return url


def parse_url(url: str) -> sqlalchemy.URL:
    """``sqlalchemy.make_url`` whose errors never quote the URL (they may hold a piece of its password).

    Raises:
        InvalidUrl: SQLAlchemy cannot read the URL.
    """
    try:
        return sqlalchemy.make_url(url)
    except Exception as err:  # noqa: BLE001 - ArgumentError, ValueError (a port that is not a number)...
        problem = type(err).__name__
        raise InvalidUrl(mask_url(url), f"SQLAlchemy cannot parse it ({problem}). Check the host, port and "
                                        f"database parts, and percent-encode special characters.") from None


def with_database(url: str, database: str) -> str:
    """Return the URL pointing at another database of the same server (everything else unchanged)."""
    parts = split_url(url)
    if parts is None:
        conninfo = re.sub(r"(?i)\bdbname\s*=\s*('(?:[^'\\]|\\.)*'|\S*)\s*", "", url).strip()
        quoted = database.replace("\\", "\\\\").replace("'", "\\'")
        return f"{conninfo} dbname='{quoted}'".strip()
    # A dbname in the query string would win over the path: drop it.
    tail = re.sub(r"(?i)([?&])dbname=[^&#]*(&|(?=#)|$)", lambda m: m.group(1) if m.group(2) else "",
                  parts.tail)
    tail = re.sub(r"[?&](?=#|$)", "", tail)
    return UrlParts(parts.scheme, parts.userinfo, parts.hosts, "/" + quote(database, safe=""), tail).render()
