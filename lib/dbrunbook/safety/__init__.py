"""Guards around a change: lint and its rules, live preflight, the deployer lock and lock-timeout retries,
data loss, stamp truth, approvals, the backfill guard.

The package's own names are those of ``safety.guards`` (what runbook cells call: ``safety.lint(s)``).
"""

from dbrunbook.safety.guards import *  # noqa: F403 - the package's face
from dbrunbook.safety.guards import __all__  # noqa: F401
