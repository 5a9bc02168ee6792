"""The one secret masker: passwords of URLs, conninfo strings, and secret environment values in any text.

Every output of dbrunbook (messages, records, tracebacks for a bug report) goes through ``mask_secrets``, so
a password typed into a URL, a ``PGPASSWORD`` or an ``API_TOKEN`` in the environment never reaches a
terminal or a signed record. Driver errors, which may echo parts of a conninfo string, go through
``scrub_driver_message``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, unquote

from dbrunbook.postgres.urls import CONNINFO_SECRET, MASK, mask_url, split_url


def _secrets_of(url: str) -> list[str]:
    """Every spelling of the passwords a URL carries, to scrub them from error messages."""
    found: list[str] = []
    parts = split_url(url)
    if parts is not None:
        if parts.userinfo and ":" in parts.userinfo:
            found.append(parts.userinfo.split(":", 1)[1])
        found += re.findall(r"(?i)[?&](?:ssl)?password=([^&#]*)", parts.tail)
    else:
        found += [m.group(2).strip("'") for m in CONNINFO_SECRET.finditer(url)]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub_driver_message(message: str, url: str) -> str:
    """Remove the URL's passwords from a driver message (libpq may echo parts of a conninfo string)."""
    return mask_secrets(message, env={}, secrets=_secrets_of(url))


#: Environment variables whose values are secrets as a whole (PGPASSWORD, API_TOKEN, AWS_SECRET_ACCESS_KEY…).
_SECRET_NAME = re.compile(r"(?i)(PASSWORD|PASSWD|PASSPHRASE|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIAL)")


#: A URL inside free text: a scheme, then everything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


_MIN_SECRET = 4  # shorter values ("1", "on") would mask unrelated text everywhere


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """The secrets an environment holds: values of variables named like secrets, passwords inside URL values.

    Longest first, with their percent-decoded and -encoded spellings, so that replacing them in order never
    leaves part of one behind.
    """
    import os

    found: list[str] = []
    for name, value in (os.environ if env is None else env).items():
        if not value:
            continue
        if _SECRET_NAME.search(name):
            found.append(value)
        if "://" in value or "password" in value.lower():
            found += _secrets_of(value)
    spelled = found + [unquote(s) for s in found] + [quote(s, safe="") for s in found]
    return sorted({s for s in spelled if len(s) >= _MIN_SECRET}, key=len, reverse=True)


def mask_secrets(text: str, *, env: dict[str, str] | None = None, secrets: list[str] | tuple = ()) -> str:
    """Return ``text`` with every secret replaced by ``***``; the one masker every output of dbrunbook uses.

    Masks, wherever they appear in the text: the password of every URL (libpq ``postgresql://``, SQLAlchemy
    ``postgresql+psycopg2://``, ``+asyncpg``, unencoded ``@ / ? #`` in the password), ``?password=`` and
    ``sslpassword=`` query parameters, ``password=`` in libpq keyword/value strings, the given ``secrets``,
    and the values of environment variables named like secrets (``env``; default ``os.environ``, ``{}`` for
    none).
    """
    if not text:
        return text
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    # An environment value is masked as a whole word only: PGPASSWORD=postgres must not turn every
    # "postgresql://" into "***ql://" (and with it defeat the URL masking below).
    for secret in secret_values(env):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", MASK, text)
    out, last = [], 0
    for match in _URL_IN_TEXT.finditer(text):
        out.append(CONNINFO_SECRET.sub(lambda m: m.group(1) + MASK, text[last:match.start()]))
        out.append(mask_url(match.group(0)))
        last = match.end()
    out.append(CONNINFO_SECRET.sub(lambda m: m.group(1) + MASK, text[last:]))
    return "".join(out)


def contains_secret(text: str) -> bool:
    """True when ``text`` holds a password the masker would hide (URL, query or keyword; not the environment)."""
    return mask_secrets(text, env={}) != text
