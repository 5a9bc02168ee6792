"""Errors of usage and configuration (exit 2): an unknown name, a missing secret, a setting or URL that cannot be used.

Raised before anything touches a database, with the file, the key and the fix in the message, so a mistyped
``-t`` or a missing ``export`` costs one more try, never a half-run procedure.
"""

from __future__ import annotations

from dbrunbook.errors.base import ConfigError, DbRunbookError


class ConfigExists(ConfigError):
    """``dbrunbook init`` would overwrite an existing dbrunbook.toml (it never does)."""


class TargetNotFound(ConfigError):
    """A target name that dbrunbook.toml does not define."""

    def __init__(self, name: str, known: list[str], path: str):
        self.name, self.known, self.path = name, known, path
        super().__init__(
            f"Unknown target '{name}' in {path}; known targets: {', '.join(known) or '(none)'}. "
            f"Add a [targets.{name}] table or pass one of the known names with -t."
        )


class MigrationSetNotFound(ConfigError):
    """A migration set name that dbrunbook.toml does not define."""

    def __init__(self, name: str, known: list[str], path: str):
        self.name, self.known, self.path = name, known, path
        super().__init__(
            f"Unknown migration set '{name}' in {path}; known sets: {', '.join(known) or '(none)'}. "
            f"Add a [migration_sets.{name}] table or use one of the known names."
        )


class MissingSecret(ConfigError):
    """The environment variable that should hold a target's connection URL is not set."""

    def __init__(self, target: str, variable: str, path: str):
        self.target, self.variable, self.path = target, variable, path
        super().__init__(
            f"Target '{target}' reads its connection URL from the environment variable {variable}, "
            f"which is not set (see [targets.{target}] url_env in {path}). "
            f"Export it, e.g. export {variable}='postgresql://user@host:5432/dbname' "
            f"(keep the password in ~/.pgpass or PGPASSWORD, never in a file under version control)."
        )


class InvalidSetting(ConfigError):
    """A key of dbrunbook.toml that is unknown, of the wrong type, or has a value dbrunbook cannot use."""

    def __init__(self, path: str, table: str, key: str, problem: str):
        self.path, self.table, self.key, self.problem = path, table, key, problem
        where = f"[{table}] " if table else ""
        super().__init__(f"{path}: {where}{key}: {problem}")


class InvalidUrl(ConfigError):
    """A connection URL that cannot be parsed; the message shows it with its password masked, never a part of it."""

    def __init__(self, masked_url: str, problem: str):
        self.masked_url, self.problem = masked_url, problem
        super().__init__(f"The connection URL {masked_url} cannot be used: {problem}")


class ParameterError(DbRunbookError):
    """A runbook parameter that is unknown, mistyped, or looks like a secret."""

    exit_status = 2
    rule: str | None = None  # the rule a vague migration message breaks (authoring.check_message)


class RunbookNotFound(DbRunbookError):
    """A runbook name with no notebook under runbooks/."""

    exit_status = 2

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        super().__init__(
            f"Unknown runbook '{name}'; known runbooks: {', '.join(known)}. Run 'dbrunbook list' to see them."
        )
