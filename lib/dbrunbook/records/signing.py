"""SSH signatures (SSHSIG, Ed25519) in pure Python, interchangeable with ``ssh-keygen -Y sign|verify``.

Records are signed the way git and OpenSSH sign files, so that a reviewer needs nothing but stock OpenSSH to
check one::

    ssh-keygen -Y verify -f allowed_signers -I alice@example.com -n dbrunbook-record \\
        -s statement.json.sig < statement.json

The formats follow OpenSSH's PROTOCOL.sshsig (the signature), PROTOCOL.key (the private key file) and the
ALLOWED SIGNERS section of ssh-keygen(1) (the trust file). Only unencrypted Ed25519 key files are used for
signing: a launcher runs unattended, so it cannot prompt for a passphrase, and an ssh-agent is not assumed.

This module is the face of the signing code: the wire encoding (``wire``), key files (``keys``), signatures
(``sshsig``) and the trust file (``signers``) each have a module of their own; their public names are
re-exported here (``signing.sign``, ``signing.verify``, ``signing.generate_key``).
"""

from __future__ import annotations

from dbrunbook.protocol import SIGNATURE_NAMESPACE
from dbrunbook.records.keys import (
    SigningKeyError,
    fingerprint,
    format_public_line,
    generate_key,
    load_key,
    parse_public_line,
    public_key_line,
)
from dbrunbook.records.signers import add_allowed_signer, principal_matches, trusted_principal
from dbrunbook.records.sshsig import parse_signature, sign, verify
from dbrunbook.records.wire import ed25519_from_blob

__all__ = [
    "SIGNATURE_NAMESPACE",
    "SigningKeyError",
    "add_allowed_signer",
    "ed25519_from_blob",
    "fingerprint",
    "format_public_line",
    "generate_key",
    "load_key",
    "parse_public_line",
    "parse_signature",
    "principal_matches",
    "public_key_line",
    "sign",
    "trusted_principal",
    "verify",
]
