"""Troubleshoot a target: recognise the guide's problems with their evidence, cause and an auditable next step.

Each ``check_*`` function looks at one problem of the guide's *Troubleshooting* section (and three more the
guide warns about elsewhere: multiple heads, drift, edited applied migrations) for every migration set of a
target, and returns a ``CheckResult``: the problems it found, each with the queries it ran and what they
returned, or a one-line all-clear saying what it looked at. Nothing here changes the database or ends a
session: the troubleshoot runbook reads, the operator decides. ``diagnose(session)`` runs every check.

A check that raises on a project (an env.py or models module that needs something, SQL that cannot be
rendered) does not end the diagnosis: its result says "could not run: <reason>" (per migration set when
only one set fails) and the other checks still run.

The checks live in ``procedures/troubleshoot/``, one module per family; this module is what runbooks import:
it holds the order of the checks (``CHECKS``), ``summary`` and ``diagnose``, and re-exports the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from dbrunbook.procedures.troubleshoot.drift import check_drift, check_edited_migrations, describe_diff
from dbrunbook.procedures.troubleshoot.live import check_blocking, check_invalid_indexes
from dbrunbook.procedures.troubleshoot.pending import check_duplicate_keys, check_objects_exist
from dbrunbook.procedures.troubleshoot.results import TITLES, CheckResult, Diagnosis, Problem
from dbrunbook.procedures.troubleshoot.revisions import (
    check_multiple_heads,
    check_unknown_revision,
    check_up_to_date,
)
from dbrunbook.procedures.troubleshoot.sqlread import created_objects, parse_inserts, split_statements
from dbrunbook.protocol import SessionLike

__all__ = [
    "CHECKS", "DIAGNOSIS_ARTIFACT", "TITLES", "CheckResult", "Diagnosis", "Problem", "check_blocking", "check_drift",
    "check_duplicate_keys", "check_edited_migrations", "check_invalid_indexes", "check_multiple_heads",
    "check_objects_exist", "check_unknown_revision", "check_up_to_date", "created_objects", "describe_diff", "diagnose",
    "parse_inserts", "split_statements", "summary",
]

DIAGNOSIS_ARTIFACT = "diagnosis.json"

# --- all together ---------------------------------------------------------------------------------------
#: In the order the runbook shows them and an operator should deal with them.
CHECKS: tuple[Callable[..., CheckResult], ...] = (
    check_up_to_date, check_unknown_revision, check_objects_exist, check_duplicate_keys, check_blocking,
    check_multiple_heads, check_drift, check_edited_migrations, check_invalid_indexes,
)


def summary(s: SessionLike, *checks: CheckResult, save: bool = True) -> Diagnosis:
    """Gather check results into a Diagnosis; save it as artifacts/diagnosis.json of the run's record."""
    result = Diagnosis(target=s.target.name, checks=tuple(checks))
    if save:
        s.save_artifact(DIAGNOSIS_ARTIFACT, json.dumps(result.as_dict(), indent=1, sort_keys=True,
                                                       default=str) + "\n")
    return result


def diagnose(s: SessionLike, migration_set: str = "all") -> Diagnosis:
    """Run every check on the session's target (nothing saved)."""
    results = [check(s) if check is check_blocking else check(s, migration_set) for check in CHECKS]
    return summary(s, *results, save=False)
