"""Whose key signs a record, and who trusts it: no trust on first use.

A record is only worth what its trust file is worth. dbrunbook therefore never creates a key during a run
and never adds a key to ``allowed_signers`` by itself: ``dbrunbook keygen`` creates the operator's key and
prints the one line the team adds to the project's trust file (``allowed_signers`` at the project root by
default, kept in version control and reviewed like code, not in the key folder). ``keygen --trust`` appends
it, for a laptop demo or a test. Before anything runs, ``require_signing_key`` checks that the key exists,
that the trust file trusts it, and under the name of the operator the statement will name.
"""

from __future__ import annotations

import re
from pathlib import Path

from dbrunbook.errors import SignerNotTrusted, SigningKeyMissing
from dbrunbook.protocol import SIGNATURE_NAMESPACE
from dbrunbook.records import keys, signers
from dbrunbook.records.runs import operator_identity

__all__ = ["OPERATOR_KEY", "create_operator_key", "ensure_operator_key", "operator_key_path", "principal_for",
           "require_signing_key"]

OPERATOR_KEY = "operator_ed25519"


def operator_key_path(config) -> Path:
    """``keys_dir/operator_ed25519``: the key every run of this operator is signed with."""
    return Path(config.keys_dir) / OPERATOR_KEY


def principal_for(operator: str) -> str:
    """The allowed_signers principal of an operator name (blanks, quotes and commas become ``_``)."""
    return re.sub(r'[\s",]+', "_", operator)


def create_operator_key(keys_dir: Path, *, operator: str | None = None,
                        allowed_signers: Path | None = None) -> tuple[Path, str]:
    """Create ``keys_dir/operator_ed25519`` for ``operator`` (default ``operator_identity()``).

    With ``allowed_signers`` the public key is also trusted there (what ``keygen --trust`` does); without,
    nothing is trusted and the caller shows the returned line for the team to add.

    Returns:
        (path of the private key, the allowed_signers line that trusts it).

    Raises:
        SigningKeyError: a key exists already at that path.
    """
    operator = operator or operator_identity()
    path = keys.generate_key(Path(keys_dir) / OPERATOR_KEY, comment=operator)
    principal = principal_for(operator)
    key_type, key_base64 = keys.public_key_line(path).split()[:2]
    line = f'{principal} namespaces="{SIGNATURE_NAMESPACE}" {key_type} {key_base64}'
    if allowed_signers is not None:
        signers.add_allowed_signer(Path(allowed_signers), principal, f"{key_type} {key_base64}")
    return path, line


def require_signing_key(config, operator: str | None = None) -> tuple[Path, str]:
    """Check, before a run starts, that its record can be signed by a key trusted as its operator.

    Returns:
        (path of the key, the principals field that trusts it).

    Raises:
        SigningKeyMissing: there is no key (run ``dbrunbook keygen``).
        SigningKeyError: the key file cannot sign (encrypted, not Ed25519, damaged).
        SignerNotTrusted: ``allowed_signers`` does not trust the key, or trusts it under another name than
            ``operator`` (default ``operator_identity()``): the record would not verify.
    """
    key = operator_key_path(config)
    allowed = Path(config.allowed_signers)
    if not key.is_file():
        raise SigningKeyMissing(key, allowed)
    line = keys.public_key_line(key)
    keys.load_key(key)  # fails now, not at the end of the run, when the key cannot sign
    principal = signers.trusted_principal(line, allowed)
    key_type, key_base64 = line.split()[:2]
    operator = operator or operator_identity()
    if principal is None:
        raise SignerNotTrusted(key, allowed, (
            f"{keys.fingerprint(line)} is not trusted by {allowed}, so its records would not verify. Have "
            f"this line added to {allowed} (reviewed like code): "
            f'{principal_for(operator)} namespaces="{SIGNATURE_NAMESPACE}" {key_type} {key_base64}'))
    if not signers.principal_matches(principal, operator):
        raise SignerNotTrusted(key, allowed, (
            f"{allowed} trusts it as '{principal}', but this run's operator is '{operator}' "
            f"(from $DBRUNBOOK_OPERATOR or user@host); the record would name someone its key does not. Set "
            f"DBRUNBOOK_OPERATOR={principal.split(',')[0]} or sign with the key of '{operator}'."))
    return key, principal


def ensure_operator_key(keys_dir: Path, allowed_signers: Path) -> tuple[Path, bool]:
    """Return the operator's signing key ``keys_dir/operator_ed25519``; it is never created here.

    Creating and trusting a key is the operator's and the team's act (``dbrunbook keygen``, see
    ``dbrunbook.records.trust``), never a side effect of a run: otherwise "valid" would mean "signed by a key this
    machine trusted itself".

    Returns:
        (path of the private key, False): the second value is kept for callers of the old signature.

    Raises:
        SigningKeyMissing: there is no key; run ``dbrunbook keygen``.
    """
    key_path = Path(keys_dir) / OPERATOR_KEY
    if not key_path.is_file():
        raise SigningKeyMissing(key_path, Path(allowed_signers))
    return key_path, False
