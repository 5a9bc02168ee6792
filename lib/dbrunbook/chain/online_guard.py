"""The guard for revisions that cannot render offline: on a protected target each is captured or allowed.

A protected target's run must not apply SQL nobody could see. ``capture`` fills in the SQL of the
online-only revisions it could run on a scratch database; ``require_covered`` stops the run for the rest,
unless the operator read them and allowed them with ``-p allow online-only@REVISION`` (recorded as an
artifact).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence

from dbrunbook.chain.values import SqlStep
from dbrunbook.protocol import SessionLike

__all__ = ["RULE", "require_covered"]

RULE = "online-only"


def _allowed(entries: Sequence[str], revision: str) -> bool:
    for entry in entries:
        rule, _, rev = entry.partition("@")
        if rule == RULE and (not rev or (len(rev) >= 4 and revision.startswith(rev))):
            return True
    return False


def require_covered(session: SessionLike, steps: dict[str, list[SqlStep]], allow: str = "", *,
                    dry_run: bool = False, direction: str = "upgrade") -> list[SqlStep]:
    """Guard: on a protected target every online-only revision about to run has captured SQL or is allowed.

    ``allow`` takes ``online-only@REVISION`` (or ``online-only`` for all) among its comma-separated entries,
    the same parameter as the lint's; what was allowed is saved as artifacts/online-only-DIRECTION.json.
    On a target that is not protected the revisions are listed and the run goes on.

    Returns:
        The online-only steps that have no captured SQL.

    Raises:
        OnlineOnlyNotCovered: protected target, some not captured and not allowed (not in a dry run).
    """
    from dbrunbook.errors import OnlineOnlyNotCovered

    entries = [e.strip() for e in (allow or "").split(",") if e.strip()]
    online = [(name, st) for name, ss in steps.items() for st in ss if st.online_only]
    uncovered = [(name, st) for name, st in online if st.source != "captured"]
    blocking = [(name, st) for name, st in uncovered if not _allowed(entries, st.revision)]
    protected = session.target.protected
    if online:
        body = {"target": session.target.name, "protected": protected, "direction": direction, "allow": entries,
                "steps": [{"migration_set": name, "revision": st.revision, "source": st.source,
                           "reason": st.reason, "capture_error": st.capture_error,
                           "allowed": _allowed(entries, st.revision)} for name, st in online]}
        with contextlib.suppress(FileExistsError):
            session.save_artifact(f"online-only-{direction}.json", json.dumps(body, indent=1, sort_keys=True) + "\n")
    if not uncovered:
        return []
    if protected and blocking:
        sets = ", ".join(sorted({f"'{name}'" for name, _ in blocking}))
        ids = ",".join(f"{RULE}@{st.revision}" for _, st in blocking)
        err = OnlineOnlyNotCovered(
            f"Target '{session.target.name}' is protected and {len(blocking)} revision(s) of {sets} cannot be "
            f"rendered offline and were not captured: {'; '.join(st.problem for _, st in blocking)}. Run "
            f"'dbrunbook run preview -t {session.target.name}' to capture their SQL on a scratch database and "
            f"have it reviewed, or, having read the revisions, run again with -p allow {ids} (recorded).",
            tuple(st for _, st in blocking))
        if not dry_run:
            raise err
        print(f"dry_run=True: a real run would stop here. {err}")
    else:
        for _, st in uncovered:
            print(f"{st.problem}; {'allowed' if protected else 'the target is not protected'}: the run goes on.")
    return [st for _, st in uncovered]
