"""SSH signatures (SSHSIG, Ed25519) in pure Python, interchangeable with ``ssh-keygen -Y sign|verify``.

The format is OpenSSH's PROTOCOL.sshsig. A signature is checked first and the trust file second, as
``ssh-keygen -Y verify`` does: a broken signature is "tampered" whoever made it, a sound one by a key the
trust file does not list is "untrusted".
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from dbrunbook.errors import SignatureInvalid
from dbrunbook.protocol import SIGNATURE_NAMESPACE
from dbrunbook.records.keys import fingerprint, format_public_line, load_key
from dbrunbook.records.signers import check_trusted
from dbrunbook.records.wire import KEY_TYPE, Reader, armor, dearmor, ed25519_from_blob, ssh_string

__all__ = ["Signature", "parse_signature", "sign", "verify"]

_SIG_MAGIC = b"SSHSIG"
_SIG_VERSION = 1
_SIG_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_SIG_END = "-----END SSH SIGNATURE-----"
_HASHES = {"sha512": hashlib.sha512, "sha256": hashlib.sha256}


# --- signatures -----------------------------------------------------------------------------------------
def _signed_data(namespace: str, hash_algorithm: str, digest: bytes) -> bytes:
    return _SIG_MAGIC + ssh_string(namespace) + ssh_string(b"") + ssh_string(hash_algorithm) + ssh_string(digest)


def sign(data: bytes, key_path: Path, namespace: str = SIGNATURE_NAMESPACE) -> bytes:
    """Sign ``data`` as ``ssh-keygen -Y sign -n NAMESPACE`` would; return the armored signature.

    Raises:
        SigningKeyError: the key file cannot be used (missing, encrypted, not Ed25519).
    """
    if not namespace:
        raise ValueError("namespace must not be empty (SSHSIG requires one)")
    key = load_key(Path(key_path))
    digest = hashlib.sha512(data).digest()
    raw_signature = key.private_key.sign(_signed_data(namespace, "sha512", digest))
    blob = (
        _SIG_MAGIC + struct.pack(">I", _SIG_VERSION) + ssh_string(key.public_blob) + ssh_string(namespace)
        + ssh_string(b"") + ssh_string("sha512") + ssh_string(ssh_string(KEY_TYPE) + ssh_string(raw_signature))
    )
    return armor(blob, _SIG_BEGIN, _SIG_END)


@dataclass(frozen=True)
class Signature:
    """An SSHSIG signature, parsed: the signer's public key blob, namespace, hash and the raw signature."""

    public_blob: bytes
    namespace: str
    hash_algorithm: str
    signature_type: str
    signature: bytes


def parse_signature(signature: bytes) -> Signature:
    try:
        reader = Reader(dearmor(signature, _SIG_BEGIN, _SIG_END))
        if reader.take(6) != _SIG_MAGIC:
            raise ValueError("missing SSHSIG magic")
        version = reader.uint32()
        if version != _SIG_VERSION:
            raise ValueError(f"unsupported SSHSIG version {version}")
        public_blob, namespace = reader.string(), reader.text()
        reader.string()  # reserved
        hash_algorithm = reader.text()
        inner = Reader(reader.string())
        signature_type, raw = inner.text(), inner.string()
        if not reader.done() or not inner.done():
            raise ValueError("trailing bytes")
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise SignatureInvalid(f"The signature is not a valid SSH signature ({err}).", "malformed") from err
    return Signature(public_blob, namespace, hash_algorithm, signature_type, raw)


def verify(data: bytes, signature: bytes, allowed_signers: Path,
           namespace: str = SIGNATURE_NAMESPACE) -> str:
    """Check an SSHSIG signature of ``data`` and return the principal(s) that ``allowed_signers`` trusts.

    As ``ssh-keygen -Y verify`` does, the signature is checked first and the trust file second: a broken
    signature is "tampered" whoever made it; a sound one by a key the file does not list (for this namespace
    and date) is "untrusted".

    Returns:
        The principals field of the first allowed_signers line that trusts the key, e.g.
        ``alice@example.com``.

    Raises:
        SignatureInvalid: with ``.status`` "malformed" (not an SSH signature, wrong namespace, unsupported key
            or hash), "tampered" (the signature does not match the data) or "untrusted"; ``.reason`` explains.
    """
    parsed = parse_signature(signature)
    if parsed.namespace != namespace:
        raise SignatureInvalid(
            f"The signature was made for namespace '{parsed.namespace}', not '{namespace}'; it does not "
            f"sign a record. Sign with namespace '{namespace}'.", "malformed",
        )
    if parsed.hash_algorithm not in _HASHES:
        raise SignatureInvalid(f"The signature uses hash '{parsed.hash_algorithm}'; only sha512 and sha256 exist in "
                       f"SSHSIG.", "malformed")
    try:
        public_key = ed25519_from_blob(parsed.public_blob)
    except ValueError as err:
        raise SignatureInvalid(f"The signing key cannot be checked: {err}. Re-sign with an Ed25519 key.",
                       "malformed") from err
    if parsed.signature_type != KEY_TYPE:
        raise SignatureInvalid(f"The signature type {parsed.signature_type} does not match the ssh-ed25519 key.",
                       "malformed")
    digest = _HASHES[parsed.hash_algorithm](data).digest()
    try:
        public_key.verify(parsed.signature, _signed_data(namespace, parsed.hash_algorithm, digest))
    except InvalidSignature:
        key_fp = fingerprint(format_public_line(parsed.public_blob))
        raise SignatureInvalid(
            f"The signature by key {key_fp} does not match the signed file: the file or the signature was "
            f"changed after signing.", "tampered",
        ) from None
    return check_trusted(parsed.public_blob, Path(allowed_signers), namespace)
