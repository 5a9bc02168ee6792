"""Errors of dbrunbook: one base class, subclasses named for the condition, carrying their data.

A message says what happened with the concrete values, then what to do. Each class has an ``exit_status``
that the launcher and the CLI use: 1 a step failed, 2 bad usage or configuration, 3 stopped at a guard.
"""

from __future__ import annotations

from dbrunbook.errors.backfill import (
    BackfillFailed,
    BackfillLockHeld,
    BackfillNotComplete,
    BackfillNotFound,
    BackfillUnfinished,
)
from dbrunbook.errors.base import ConfigError, DbRunbookError, GuardStop
from dbrunbook.errors.database import (
    AmbiguousRevision,
    DatabaseUnavailable,
    DialectMismatch,
    EmbeddedServerError,
    HealthCheckFailed,
    InvalidIndex,
    MaintenanceFailed,
    MigrationFailed,
    RevisionNotFound,
)
from dbrunbook.errors.guards import (
    BackupFailed,
    BackupRequired,
    BlockersPresent,
    ConfirmationRequired,
    DataLossRefused,
    DeployerLockHeld,
    NoSnapshot,
    NotAtExpectedRevision,
    OnlineOnlyNotCovered,
    PreviewMismatch,
    PreviewNotApproved,
    RehearsalFailed,
    ReviewFailed,
    RowsVanished,
    StampWouldLie,
    UnexpectedChange,
    UnsafeMigration,
)
from dbrunbook.errors.records import (
    ApprovalInvalid,
    ChainLockTimeout,
    DeployerLockRequired,
    RecordNotWritable,
    RunDirectoryInvalid,
    SignatureInvalid,
    SignerNotTrusted,
    SigningKeyMissing,
)
from dbrunbook.errors.usage import (
    ConfigExists,
    InvalidSetting,
    InvalidUrl,
    MigrationSetNotFound,
    MissingSecret,
    ParameterError,
    RunbookNotFound,
    TargetNotFound,
)

__all__ = [
    "AmbiguousRevision", "ApprovalInvalid", "BackfillFailed", "BackfillLockHeld", "BackfillNotComplete",
    "BackfillNotFound", "BackfillUnfinished", "BackupFailed", "BackupRequired", "BlockersPresent",
    "ChainLockTimeout", "ConfigError", "ConfigExists", "ConfirmationRequired", "DataLossRefused",
    "DatabaseUnavailable", "DbRunbookError", "DeployerLockHeld", "DeployerLockRequired", "DialectMismatch",
    "EmbeddedServerError", "GUARD_ENAMES", "GuardStop", "HealthCheckFailed", "InvalidIndex", "InvalidSetting",
    "InvalidUrl", "MaintenanceFailed", "MigrationFailed", "MigrationSetNotFound", "MissingSecret", "NoSnapshot",
    "NotAtExpectedRevision", "OnlineOnlyNotCovered", "ParameterError", "PreviewMismatch", "PreviewNotApproved",
    "RecordNotWritable", "RehearsalFailed", "ReviewFailed", "RevisionNotFound", "RowsVanished",
    "RunDirectoryInvalid", "RunbookNotFound", "SignatureInvalid", "SignerNotTrusted",
    "SigningKeyMissing", "StampWouldLie", "TargetNotFound", "UnexpectedChange", "UnsafeMigration"
]


def _guard_names() -> frozenset[str]:
    found, todo = set(), [GuardStop]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(found)


#: Exception names (papermill's ``ename``) the launcher classifies as "stopped at a guard": every GuardStop
#: subclass, derived from the class tree (at the end of the module, after every class) so a new guard cannot
#: be forgotten here.
GUARD_ENAMES = _guard_names()
