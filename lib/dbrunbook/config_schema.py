"""The type and value of every key of dbrunbook.toml, checked when the file loads.

A wrong value found at run time costs a failed record and a misleading message (``lock_timeout = 2`` used to
end in an ``AttributeError`` inside the kernel, ``"2 parsecs"`` in "Cannot connect… check that the server is
up"); found here it is exit 2, naming the file, the table and the key, before anything runs.

Kinds: ``str``, ``bool``, ``int`` (whole, >= 0), ``env`` (an environment variable's name), ``http`` (an
http(s) URL), ``path``, ``duration`` (read by dbrunbook: "60s", "24h", "1h30min"), ``pg_duration`` (handed to
PostgreSQL as a setting: a number and one unit PostgreSQL knows), ``str_table`` (a table of strings).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from dbrunbook.errors import ConfigError, InvalidSetting

__all__ = [
    "PROJECT_KEYS",
    "RECORDS_KEYS",
    "SET_KINDS",
    "TARGET_KINDS",
    "TOP_LEVEL_KEYS",
    "check_directory",
    "check_table",
    "check_unknown",
    "parse_duration",
]

TOP_LEVEL_KEYS = {"project", "records", "targets", "migration_sets", "backfills", "groups"}
PROJECT_KEYS = {"outputs": "path", "runbooks": "path", "state_dir": "path", "default_target": "str"}
RECORDS_KEYS = {"keys_dir": "path", "allowed_signers": "path"}
TARGET_KINDS = {
    "url_env": "env", "service": "str", "embedded": "bool", "protected": "bool", "lock_timeout": "pg_duration",
    "statement_timeout": "pg_duration", "retries": "int", "description": "str", "health_url": "http",
    "maintenance_command": "str", "maintenance_flag": "path", "backup_max_age": "duration",
    "blocker_max_age": "duration", "database": "str",
    "backfill_max_lag": "duration", "backfill_max_wal_backlog": "int", "approval_max_age": "duration",
    "backfill_flush_after": "int", "backfill_checkpoint_percent": "int",
}
SET_KINDS = {
    "alembic_ini": "path", "section": "str", "script_location": "path", "version_table": "str",
    "version_table_schema": "str", "url_env": "env", "env": "str_table", "models": "str", "baseline": "str",
    "description": "str", "driver": "str",
}

#: The units PostgreSQL accepts for time settings (guc.c); "m" or "sec" make the server refuse to connect.
_PG_DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(us|ms|s|min|h|d)\s*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _shown(value: Any) -> str:
    """The value as it would be written in TOML, secrets masked (a URL pasted in the wrong key is not echoed)."""
    if isinstance(value, str):
        if "://" in value or "=" in value:  # only then can it hold a password (and need db's masker)
            from dbrunbook.postgres.masking import mask_secrets

            value = mask_secrets(value)
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return type(value).__name__


def _problem(key: str, value: Any, kind: str) -> str | None:
    """What is wrong with ``key = value`` for this kind, with the fix; None when it is fine."""
    shown = _shown(value)
    if kind == "bool":
        return None if isinstance(value, bool) else f"{key} = {shown} must be true or false (no quotes)."
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"{key} = {shown} must be a whole number, e.g. {key} = 8 (no quotes)."
        return None if value >= 0 else f"{key} = {shown} must be 0 or more."
    if kind in ("duration", "pg_duration"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value == 0:
                return None
            return (f"{key} = {shown} is ambiguous: PostgreSQL reads a bare number as milliseconds, a person as "
                    f"seconds. Write the unit, e.g. {key} = \"{value:g}s\" (or \"{value:g}ms\").")
        if not isinstance(value, str):
            return f"{key} = {shown} must be a duration in quotes, e.g. {key} = \"2s\"."
        if kind == "pg_duration":
            if value.strip() == "0" or _PG_DURATION.match(value):
                return None
            return (f"{key} = {shown} is not a duration PostgreSQL accepts: write a number and one of the units "
                    f"us, ms, s, min, h, d, e.g. {key} = \"2s\" or \"15min\".")
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", value) and float(value) != 0:
            return f"{key} = {shown} is ambiguous without a unit; write e.g. {key} = \"{value.strip()}s\"."
        try:
            parse_duration(value, key=key)
        except ConfigError:
            return (f"{key} = {shown} is not a duration; write it like \"60s\", \"5min\", \"24h\", \"7d\" or "
                    f"\"1h30min\".")
        return None
    if not isinstance(value, (str, dict)) or (kind != "str_table" and isinstance(value, dict)):
        return f"{key} = {shown} must be a string in quotes."
    if kind == "str_table":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            return f"{key} must be a table of strings, e.g. {key} = {{ APP_MODE = \"migrate\" }}."
        return None
    assert isinstance(value, str)  # only a str_table is a dict, and it returned above
    if kind == "env" and not _ENV_NAME.match(value):
        return (f"{key} = {shown} must name an environment variable (e.g. \"STAGING_DATABASE_URL\"), "
                f"not hold the connection itself.")
    if kind == "http" and not re.match(r"(?i)^https?://\S+$", value):
        return f"{key} = {shown} must be an http:// or https:// URL."
    if kind == "path" and not value.strip():
        return f"{key} = \"\" must be a path; remove the key to use the default."
    return None


def check_table(raw: dict, kinds: dict[str, str], table: str, path: Path | str) -> None:
    """Check the type and value of each key of one table that ``kinds`` knows (others: no opinion here).

    Raises:
        InvalidSetting: the first key whose value is wrong; the message names file, table and key.
    """
    for key, value in raw.items():
        kind = kinds.get(key)
        problem = _problem(key, value, kind) if kind else None
        if problem:
            raise InvalidSetting(str(path), table, key, problem)


def check_unknown(raw: dict, allowed: set[str] | dict, table: str, path: Path | str) -> None:
    """Refuse keys the table does not have, suggesting the nearest known one (``retry`` → ``retries``).

    Raises:
        InvalidSetting: an unknown key.
    """
    for key in sorted(set(raw) - set(allowed)):
        near = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise InvalidSetting(str(path), table, key,
                             f"unknown key; {hint}Known keys: {', '.join(sorted(allowed))}.")


def check_directory(folder: Path, key: str, table: str, path: Path | str) -> None:
    """A folder dbrunbook will create and write: refuse when it, or a folder above it, is a file.

    Raises:
        InvalidSetting: the folder cannot be created because a file is in the way.
    """
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == folder else f"cannot be created: {candidate} is a file"
                raise InvalidSetting(str(path), table, key,
                                     f"{folder} {where}, not a folder. Move the file away or set {key} to "
                                     f"another folder.")
            return


_DURATION_UNITS = {
    "ms": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
    "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}


def parse_duration(text: str | float, *, key: str | None = None) -> float:
    """Seconds in a duration as dbrunbook.toml writes them: "60s", "5min", "24h", "7d", "1h30min", "100ms".

    A bare number means seconds.

    Raises:
        ConfigError: not a duration (``key`` names the setting in the message).
    """
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    rest = re.sub(r"(\d+(?:\.\d+)?)\s*([a-z]*)|\s+", "", value)
    if not parts or rest or any(unit and unit not in _DURATION_UNITS for _, unit in parts):
        where = f" ({key} of the target in dbrunbook.toml)" if key else ""
        raise ConfigError(f"'{text}' is not a duration; write it like 60s, 5min, 24h, 7d or 1h30min{where}.")
    return sum(float(n) * _DURATION_UNITS[unit or "s"] for n, unit in parts)
