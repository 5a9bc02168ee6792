"""The commands about records and fleets: ``verify``, ``report``, ``keygen``, ``approve`` and ``fleet``.

``verify`` checks run records one by one or whole archives (the hash chain, and with ``-t`` the target's
ledger), and fleet roll-ups first; the others make one library call each and print what it wrote.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

from dbrunbook.cli_output import parameter_values, print_err, text_table
from dbrunbook.config import load_config


def cmd_verify(args: argparse.Namespace) -> int:
    from dbrunbook import records
    from dbrunbook.postgres import db
    from dbrunbook.records import archive

    config = load_config(args.config)
    # The default outputs/ not existing yet just means no runs; a folder the user named must exist.
    missing = [str(p) for p in args.paths if not Path(p).is_dir()]
    if missing:
        print_err(f"Not a folder: {', '.join(missing)}. Pass run directories or folders that contain them.")
        return 2
    paths = [Path(p) for p in args.paths] or [config.outputs_dir]
    status, paths = _verify_fleets(config, paths)
    single = [p for p in paths if records.is_run_dir(p)]
    folders = [p for p in paths if p not in single]
    if single:  # run directories named one by one: each record on its own, no chain to follow
        checks = [records.verify_record(d, config.allowed_signers) for d in single]
        print(text_table([{"run id": c.run_id, "status": c.status, "principal": c.principal or "-",
                       "problems": "; ".join(c.problems)} for c in checks],
                     ["run id", "status", "principal", "problems"]))
        bad = [c for c in checks if not c.ok]
        print(f"\n{len(checks) - len(bad)} of {len(checks)} records valid.")
        status = 1 if bad else 0
    engines = {}
    try:
        for name in args.target or []:
            _target, engines[name] = db.connect_target(config, name)
        for folder in folders:
            report = archive.verify_archive(folder, config.allowed_signers, engines,
                                            migration_sets=config.migration_sets.values() if engines else ())
            if not report.checks and not report.findings:
                print(f"No run records under {folder}.")
                continue
            if report.checks:
                print(text_table(report.rows(), ["run_id", "database", "runbook", "status", "chain", "problems"]))
            for finding in report.orphan_findings():
                print(f"{finding.kind}: {finding.message}")
            print(f"\n{report.summary()}")
            status = max(status, report.exit_status)
    finally:
        for engine in engines.values():
            engine.dispose()
    return status


def cmd_report(args: argparse.Namespace) -> int:
    from dbrunbook.views.report import build_report

    config = load_config(args.config)
    built = build_report(config.outputs_dir, config.allowed_signers, Path(args.out) if args.out else None)
    bad = sum(1 for e in built.entries if e.status != "valid")
    print(f"{built.index}  ({len(built.entries)} records, {bad} not valid)")
    if args.open:
        import webbrowser

        webbrowser.open(built.index.resolve().as_uri())
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from dbrunbook import records
    from dbrunbook.records import signing, trust

    config = load_config(args.config)
    key = trust.operator_key_path(config)
    if args.force and key.exists():
        # Moved aside, never deleted: records it signed still verify (its key stays in allowed_signers).
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        for old in (key, key.with_name(key.name + ".pub")):
            if old.exists():
                old.rename(old.with_name(f"{old.name}.replaced-{stamp}"))
        print(f"Moved the old key aside: {key}.replaced-{stamp}")
    if key.exists():
        print(f"Signing key {key} exists already; pass --force to replace it.")
        if args.trust:
            principal = trust.principal_for(records.operator_identity())
            signing.add_allowed_signer(config.allowed_signers, principal, signing.public_key_line(key))
            print(f"Trusted it as {principal} in {config.allowed_signers}.")
        return 0
    path, line = trust.create_operator_key(config.keys_dir,
                                           allowed_signers=config.allowed_signers if args.trust else None)
    print(f"Created signing key {path} (public key {path}.pub).")
    if args.trust:
        print(f"Trusted it in {config.allowed_signers}:\n  {line}")
    else:
        print(f"Runs refuse to start until the team trusts it: add this line to {config.allowed_signers} "
              f"(reviewed like code), or run 'dbrunbook keygen --trust' on a machine of your own:\n  {line}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    from dbrunbook.safety.approvals import approve

    path = approve(load_config(args.config), args.run_id, note=args.note or "",
                   key_path=Path(args.key) if args.key else None)
    print(f"Approved {args.run_id}: {path} (signed, with {path.name}.sig)")
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from dbrunbook.execution.fleet import run_fleet

    result = run_fleet(args.runbook, args.group, parameters=parameter_values(args.parameter), waves=args.waves,
                       parallel=args.parallel, max_failures=args.max_failures, config=load_config(args.config),
                       progress=print_err)
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True, default=str))
        return result.exit_status
    rows = [{"wave": o.wave, "target": o.target, "outcome": o.outcome, "run id": o.run_id or "-",
             "seconds": f"{o.seconds:.1f}"} for o in result.outcomes]
    print(text_table(rows, ["wave", "target", "outcome", "run id", "seconds"]))
    print(f"\nfleet {result.fleet_id}: {result.stopped or 'every target ran'}; roll-up {result.record_dir}")
    return result.exit_status


def _verify_fleets(config, paths: list[Path]) -> tuple[int, list[Path]]:
    """Check the fleet roll-ups among ``paths`` (or under them); returns a status and the other paths."""
    from dbrunbook.execution import fleet_rollup

    checks = fleet_rollup.verify_rollups(paths, config.allowed_signers)
    if checks:
        print(text_table([{"fleet id": c.fleet_id, "status": c.status, "problems": "; ".join(c.problems)}
                      for c in checks], ["fleet id", "status", "problems"]))
        print(f"\n{sum(c.ok for c in checks)} of {len(checks)} fleet roll-ups valid.\n")
    return (1 if any(not c.ok for c in checks) else 0), [p for p in paths if not fleet_rollup.is_rollup_dir(p)]
