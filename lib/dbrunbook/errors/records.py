"""Errors of records and their keys: a run directory, a signature, the signing key, the chain lock, an approval.

A run must be able to finish its signed record, so what it needs for that (a key, trust, a writable folder,
the deployer lock for a change) is checked first and refused with these before any statement runs.
"""

from __future__ import annotations

from dbrunbook.errors.base import ConfigError, DbRunbookError


class RunDirectoryInvalid(DbRunbookError):
    """A folder given to ``seal`` that is not an open run directory (no intent or notebook, or sealed)."""

    exit_status = 2


class SignatureInvalid(DbRunbookError):
    """A record whose signature, trust or digest does not check out.

    ``status`` is "tampered" (bad signature or digest), "untrusted" (valid signature by a key that is not in
    allowed_signers) or "malformed".
    """

    def __init__(self, reason: str, status: str = "tampered"):
        self.reason, self.status = reason, status
        super().__init__(reason)


class SigningKeyMissing(ConfigError):
    """No operator signing key: ``run`` never creates or trusts one by itself."""

    def __init__(self, key_path, allowed_signers):
        self.key_path, self.allowed_signers = key_path, allowed_signers
        super().__init__(
            f"No signing key at {key_path}: every run is signed, and dbrunbook does not create or trust a key "
            f"on its own. Run 'dbrunbook keygen' (it prints the line to add to {allowed_signers}, the trust "
            f"file reviewed like code; 'dbrunbook keygen --trust' adds it), or set [records] keys_dir to the "
            f"folder holding your operator_ed25519 key."
        )


class SignerNotTrusted(ConfigError):
    """The operator's key is not in the trust file, or is trusted under another name than the operator's."""

    def __init__(self, key_path, allowed_signers, problem: str):
        self.key_path, self.allowed_signers, self.problem = key_path, allowed_signers, problem
        super().__init__(f"Signing key {key_path}: {problem}")


class ChainLockTimeout(DbRunbookError):
    """Another process held the archive's chain lock for longer than a seal can take."""

    def __init__(self, lock_path, seconds: float):
        self.lock_path, self.seconds = lock_path, seconds
        super().__init__(
            f"Could not take the chain lock {lock_path} within {seconds:.0f}s: another seal holds it. Look for "
            f"a hung 'dbrunbook' process (fuser {lock_path}); the run directory stays unsealed, seal it "
            f"afterwards with 'dbrunbook seal RUN_DIR'."
        )


class ApprovalInvalid(DbRunbookError):
    """An approval that cannot be written: the record to approve is not a valid papermill preview."""

    exit_status = 2


class RecordNotWritable(ConfigError):
    """Something a run needs to finish its record (a folder, the trust file, free space) is missing.

    Found before the first statement runs, so the run is refused (exit 2) with nothing changed.
    """

    def __init__(self, path, problem: str, fix: str):
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"Cannot finish a run's record: {path} {problem}. Nothing was run. {fix}")


class DeployerLockRequired(DbRunbookError):
    """A change method was called by a session that does not hold the deployer lock of its database."""

    exit_status = 2

    def __init__(self, action: str, database: str, target: str, run_id: str, reason: str):
        self.action, self.database, self.target, self.run_id, self.reason = action, database, target, run_id, reason
        super().__init__(
            f"{action} would change database '{database}' on target '{target}', but run {run_id} {reason}. "
            f"Nothing was changed. Change a database only under its deployer lock: run a runbook with "
            f"'dbrunbook run' (the launcher takes it), or open the session with open_session('{target}', "
            f"run_id=..., lock=True)."
        )
