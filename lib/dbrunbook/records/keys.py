"""OpenSSH Ed25519 key files and public key lines: read, create, print, fingerprint.

The private key file is OpenSSH's own format (PROTOCOL.key), so ``ssh-keygen`` reads the keys dbrunbook
creates and dbrunbook signs with keys ``ssh-keygen -t ed25519 -N ''`` created. Only unencrypted Ed25519 keys
are used: a launcher runs unattended, so it cannot prompt for a passphrase, and an ssh-agent is not assumed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from dbrunbook.errors import ConfigError
from dbrunbook.records.wire import KEY_TYPE, Reader, armor, dearmor, ed25519_blob, ssh_string

__all__ = [
    "KeyFile",
    "SigningKeyError",
    "fingerprint",
    "format_public_line",
    "generate_key",
    "load_key",
    "parse_public_line",
    "public_key_line",
]

log = logging.getLogger(__name__)

_KEY_MAGIC = b"openssh-key-v1\x00"
_KEY_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_KEY_END = "-----END OPENSSH PRIVATE KEY-----"
_FIX_KEY = ("Create an unencrypted Ed25519 key with 'dbrunbook keygen' "
            "(or ssh-keygen -t ed25519 -N '' -f PATH)")


class SigningKeyError(ConfigError):
    """A signing key file that is missing, unreadable, encrypted, not Ed25519, or would be overwritten."""

    def __init__(self, path: Path, problem: str, fix: str = _FIX_KEY):
        self.path, self.problem = path, problem
        super().__init__(f"Signing key {path}: {problem}. {fix}.")


# --- key files ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyFile:
    """An unencrypted Ed25519 private key read from an OpenSSH key file, with the file's comment."""

    private_key: Ed25519PrivateKey
    comment: str

    @property
    def public_blob(self) -> bytes:
        return ed25519_blob(self.private_key.public_key())


def _encode_private_key(private_key: Ed25519PrivateKey, comment: str) -> bytes:
    """Serialize in OpenSSH's own format (PROTOCOL.key), keeping the comment ssh-keygen -l shows."""
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    check = secrets.token_bytes(4)
    private_section = (
        check + check + ssh_string(KEY_TYPE) + ssh_string(public_raw) + ssh_string(seed + public_raw)
        + ssh_string(comment)
    )
    # Padding 1, 2, 3, ... up to the cipher block size (8 for "none"), as ssh-keygen writes it.
    private_section += bytes(range(1, 1 + (-len(private_section)) % 8))
    blob = (
        _KEY_MAGIC + ssh_string("none") + ssh_string("none") + ssh_string(b"") + struct.pack(">I", 1)
        + ssh_string(ed25519_blob(private_key.public_key())) + ssh_string(private_section)
    )
    return armor(blob, _KEY_BEGIN, _KEY_END)


def load_key(key_path: Path) -> KeyFile:
    """Read an unencrypted OpenSSH Ed25519 private key file.

    Raises:
        SigningKeyError: the file is missing, not an OpenSSH private key, encrypted, or not Ed25519.
    """
    key_path = Path(key_path)
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(key_path, "no such file") from None
    except OSError as err:
        raise SigningKeyError(key_path, f"cannot be read ({err.strerror})") from err
    head = data.lstrip()[:64].decode("ascii", errors="replace")
    if not head.startswith(_KEY_BEGIN):
        kind = head.splitlines()[0] if head else "an empty file"
        if head.startswith(("ssh-", "ecdsa-", "sk-")):
            kind = "a public key (pass the private key file, without .pub)"
        raise SigningKeyError(key_path, f"is not an OpenSSH private key (found {kind})")
    try:
        reader = Reader(dearmor(data, _KEY_BEGIN, _KEY_END))
        if reader.take(len(_KEY_MAGIC)) != _KEY_MAGIC:
            raise ValueError("bad magic")
        cipher, kdf = reader.text(), reader.text()
        reader.string()  # kdf options
        if cipher != "none" or kdf != "none":
            raise SigningKeyError(
                key_path,
                f"is protected by a passphrase (cipher {cipher}, kdf {kdf}); dbrunbook runs unattended and "
                f"cannot prompt for it",
                "Use a dedicated unencrypted key for records: 'dbrunbook keygen' "
                "(or ssh-keygen -t ed25519 -N '' -f PATH), kept readable by the operator only",
            )
        if reader.uint32() != 1:
            raise ValueError("more than one key in the file")
        reader.string()  # public key, repeated inside the private section
        private = Reader(reader.string())
        if private.uint32() != private.uint32():
            raise ValueError("check integers differ")
        key_type = private.text()
        if key_type != KEY_TYPE:
            raise SigningKeyError(key_path, f"is a {key_type} key; dbrunbook signs with Ed25519 keys only")
        public_raw = private.string()
        secret = private.string()
        comment = private.text()
    except SigningKeyError:
        raise
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise SigningKeyError(key_path, f"is not a valid OpenSSH private key ({err})") from err
    if len(secret) != 64 or secret[32:] != public_raw:
        raise SigningKeyError(key_path, "holds an inconsistent Ed25519 key (public half does not match)")
    return KeyFile(Ed25519PrivateKey.from_private_bytes(secret[:32]), comment)


def generate_key(path: Path, comment: str) -> Path:
    """Create an Ed25519 key pair: the OpenSSH private key at ``path`` (mode 0600) and ``path.pub``.

    Args:
        path: where the private key goes; its folder is created (0700) when missing.
        comment: stored in both files, shown by ``ssh-keygen -l`` (typically the operator, user@host).

    Returns:
        ``path``.

    Raises:
        SigningKeyError: ``path`` or ``path.pub`` already exists (a key is never overwritten: records signed
            with it would no longer verify once its public key left allowed_signers).
    """
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    for existing in (path, pub_path):
        if existing.exists():
            raise SigningKeyError(
                existing, "already exists; refusing to overwrite a key",
                "Use that key, or move it away first if you really mean to replace it",
            )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    encoded = _encode_private_key(private_key, comment)
    # O_EXCL: no race with another process creating the same key; 0600 from the start, never widened.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningKeyError(path, "already exists; refusing to overwrite a key",
                              "Use that key, or move it away first") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(encoded)
    blob = ed25519_blob(private_key.public_key())
    pub_path.write_text(format_public_line(blob, comment) + "\n", encoding="utf-8")
    log.info("created signing key %s (%s)", path, fingerprint(format_public_line(blob, comment)))
    return path


def format_public_line(blob: bytes, comment: str = "") -> str:
    line = f"{KEY_TYPE} {base64.b64encode(blob).decode('ascii')}"
    return f"{line} {comment}" if comment else line


def public_key_line(key_path: Path) -> str:
    """Return the ``ssh-ed25519 AAAA... comment`` line of a private key file (or of a .pub file)."""
    key_path = Path(key_path)
    try:
        text = key_path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        raise SigningKeyError(key_path, "no such file") from None
    if text.startswith(KEY_TYPE + " "):
        parse_public_line(text.splitlines()[0])  # validates
        return text.splitlines()[0].strip()
    key = load_key(key_path)
    return format_public_line(key.public_blob, key.comment)


def parse_public_line(line: str) -> bytes:
    """Return the key blob of ``type base64 [comment]``; ValueError when it is not one."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError(f"not a public key line: {line[:40]!r}")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        declared = Reader(blob).text()
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not a public key line: {line[:40]!r}") from err
    if declared != parts[0]:
        raise ValueError(f"key type {parts[0]} does not match the encoded key ({declared})")
    return blob


def fingerprint(public_key_line: str) -> str:
    """Return the ``SHA256:...`` fingerprint of a public key line, exactly as ``ssh-keygen -l`` prints it."""
    blob = parse_public_line(public_key_line.strip())
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
