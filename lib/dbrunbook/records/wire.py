"""SSH wire encoding (RFC 4251 strings and uint32s) and base64 armor, as OpenSSH's files use them.

Key files, signatures and public key lines all carry the same few encodings; they live here once so that the
key and signature formats read as what they are, not as byte handling.
"""

from __future__ import annotations

import base64
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["ed25519_from_blob"]

KEY_TYPE = "ssh-ed25519"


# --- SSH wire encoding (RFC 4251 string/uint32) ---------------------------------------------------------
def ssh_string(value: bytes | str) -> bytes:
    """An SSH ``string``: uint32 length, then the bytes (text as UTF-8)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return struct.pack(">I", len(value)) + value


class Reader:
    """Reads SSH wire values; any overrun raises ValueError, which callers turn into their own error."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated data")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def string(self) -> bytes:
        return self.take(self.uint32())

    def text(self) -> str:
        return self.string().decode("utf-8")

    def done(self) -> bool:
        return self.pos == len(self.data)


def armor(blob: bytes, begin: str, end: str) -> bytes:
    """``blob`` in base64 lines of 70 between ``begin`` and ``end``, as OpenSSH writes its files."""
    text = base64.b64encode(blob).decode("ascii")
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("\n".join([begin, *lines, end]) + "\n").encode("ascii")


def dearmor(data: bytes, begin: str, end: str) -> bytes:
    """The blob inside an armored file; ValueError when it is not enclosed in ``begin`` ... ``end``."""
    text = data.decode("ascii", errors="replace").strip()
    if not text.startswith(begin) or not text.endswith(end):
        raise ValueError(f"not enclosed in {begin} ... {end}")
    body = "".join(text[len(begin):-len(end)].split())
    return base64.b64decode(body, validate=True)


def ed25519_blob(public_key: Ed25519PublicKey) -> bytes:
    """The SSH wire blob of an Ed25519 public key (what public key lines and signatures carry)."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return ssh_string(KEY_TYPE) + ssh_string(raw)


def ed25519_from_blob(blob: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key of an SSH wire blob; ValueError for another key type or a bad length."""
    reader = Reader(blob)
    key_type = reader.text()
    if key_type != KEY_TYPE:
        raise ValueError(f"key type {key_type} is not supported (dbrunbook handles ssh-ed25519 only)")
    raw = reader.string()
    if len(raw) != 32 or not reader.done():
        raise ValueError("ssh-ed25519 public key is not 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)
