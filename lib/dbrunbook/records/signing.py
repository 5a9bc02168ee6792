"""SSH signatures (SSHSIG, Ed25519) in pure Python, interchangeable with ``ssh-keygen -Y sign|verify``.

Records are signed the way git and OpenSSH sign files, so that a reviewer needs nothing but stock OpenSSH to
check one::

    ssh-keygen -Y verify -f allowed_signers -I alice@example.com -n dbrunbook-record \\
        -s statement.json.sig < statement.json

The formats follow OpenSSH's PROTOCOL.sshsig (the signature), PROTOCOL.key (the private key file) and the
ALLOWED SIGNERS section of ssh-keygen(1) (the trust file). Only unencrypted Ed25519 key files are used for
signing: a launcher runs unattended, so it cannot prompt for a passphrase, and an ssh-agent is not assumed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import re
import secrets
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from dbrunbook.errors import ConfigError, SignatureInvalid
from dbrunbook.execution.protocol import SIGNATURE_NAMESPACE

__all__ = [
    "SigningKeyError",
    "add_allowed_signer",
    "fingerprint",
    "generate_key",
    "principal_matches",
    "public_key_line",
    "sign",
    "trusted_principal",
    "verify",
]

log = logging.getLogger(__name__)

_KEY_TYPE = "ssh-ed25519"
_SIG_MAGIC = b"SSHSIG"
_SIG_VERSION = 1
_SIG_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_SIG_END = "-----END SSH SIGNATURE-----"
_KEY_MAGIC = b"openssh-key-v1\x00"
_KEY_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_KEY_END = "-----END OPENSSH PRIVATE KEY-----"
_HASHES = {"sha512": hashlib.sha512, "sha256": hashlib.sha256}
_FIX_KEY = ("Create an unencrypted Ed25519 key with 'dbrunbook keygen' "
            "(or ssh-keygen -t ed25519 -N '' -f PATH)")


class SigningKeyError(ConfigError):
    """A signing key file that is missing, unreadable, encrypted, not Ed25519, or would be overwritten."""

    def __init__(self, path: Path, problem: str, fix: str = _FIX_KEY):
        self.path, self.problem = path, problem
        super().__init__(f"Signing key {path}: {problem}. {fix}.")


def _invalid(reason: str, status: str) -> SignatureInvalid:
    return SignatureInvalid(reason, status)


# --- SSH wire encoding (RFC 4251 string/uint32) ---------------------------------------------------------
def _string(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return struct.pack(">I", len(value)) + value


class _Reader:
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


def _armor(blob: bytes, begin: str, end: str) -> bytes:
    text = base64.b64encode(blob).decode("ascii")
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("\n".join([begin, *lines, end]) + "\n").encode("ascii")


def _dearmor(data: bytes, begin: str, end: str) -> bytes:
    text = data.decode("ascii", errors="replace").strip()
    if not text.startswith(begin) or not text.endswith(end):
        raise ValueError(f"not enclosed in {begin} ... {end}")
    body = "".join(text[len(begin):-len(end)].split())
    return base64.b64decode(body, validate=True)


def _public_blob(public_key: Ed25519PublicKey) -> bytes:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _string(_KEY_TYPE) + _string(raw)


def ed25519_from_blob(blob: bytes) -> Ed25519PublicKey:
    reader = _Reader(blob)
    key_type = reader.text()
    if key_type != _KEY_TYPE:
        raise ValueError(f"key type {key_type} is not supported (dbrunbook handles ssh-ed25519 only)")
    raw = reader.string()
    if len(raw) != 32 or not reader.done():
        raise ValueError("ssh-ed25519 public key is not 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


# --- key files ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _KeyFile:
    private_key: Ed25519PrivateKey
    comment: str

    @property
    def public_blob(self) -> bytes:
        return _public_blob(self.private_key.public_key())


def _encode_private_key(private_key: Ed25519PrivateKey, comment: str) -> bytes:
    """Serialize in OpenSSH's own format (PROTOCOL.key), keeping the comment ssh-keygen -l shows."""
    seed = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    check = secrets.token_bytes(4)
    private_section = (
        check + check + _string(_KEY_TYPE) + _string(public_raw) + _string(seed + public_raw)
        + _string(comment)
    )
    # Padding 1, 2, 3, ... up to the cipher block size (8 for "none"), as ssh-keygen writes it.
    private_section += bytes(range(1, 1 + (-len(private_section)) % 8))
    blob = (
        _KEY_MAGIC + _string("none") + _string("none") + _string(b"") + struct.pack(">I", 1)
        + _string(_public_blob(private_key.public_key())) + _string(private_section)
    )
    return _armor(blob, _KEY_BEGIN, _KEY_END)


def load_key(key_path: Path) -> _KeyFile:
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
        reader = _Reader(_dearmor(data, _KEY_BEGIN, _KEY_END))
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
        private = _Reader(reader.string())
        if private.uint32() != private.uint32():
            raise ValueError("check integers differ")
        key_type = private.text()
        if key_type != _KEY_TYPE:
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
    return _KeyFile(Ed25519PrivateKey.from_private_bytes(secret[:32]), comment)


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
    blob = _public_blob(private_key.public_key())
    pub_path.write_text(format_public_line(blob, comment) + "\n", encoding="utf-8")
    log.info("created signing key %s (%s)", path, fingerprint(format_public_line(blob, comment)))
    return path


def format_public_line(blob: bytes, comment: str = "") -> str:
    line = f"{_KEY_TYPE} {base64.b64encode(blob).decode('ascii')}"
    return f"{line} {comment}" if comment else line


def public_key_line(key_path: Path) -> str:
    """Return the ``ssh-ed25519 AAAA... comment`` line of a private key file (or of a .pub file)."""
    key_path = Path(key_path)
    try:
        text = key_path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        raise SigningKeyError(key_path, "no such file") from None
    if text.startswith(_KEY_TYPE + " "):
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
        declared = _Reader(blob).text()
    except (binascii.Error, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not a public key line: {line[:40]!r}") from err
    if declared != parts[0]:
        raise ValueError(f"key type {parts[0]} does not match the encoded key ({declared})")
    return blob


def fingerprint(public_key_line: str) -> str:
    """Return the ``SHA256:...`` fingerprint of a public key line, exactly as ``ssh-keygen -l`` prints it."""
    blob = parse_public_line(public_key_line.strip())
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


# --- signatures -----------------------------------------------------------------------------------------
def _signed_data(namespace: str, hash_algorithm: str, digest: bytes) -> bytes:
    return _SIG_MAGIC + _string(namespace) + _string(b"") + _string(hash_algorithm) + _string(digest)


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
        _SIG_MAGIC + struct.pack(">I", _SIG_VERSION) + _string(key.public_blob) + _string(namespace)
        + _string(b"") + _string("sha512") + _string(_string(_KEY_TYPE) + _string(raw_signature))
    )
    return _armor(blob, _SIG_BEGIN, _SIG_END)


@dataclass(frozen=True)
class _Signature:
    public_blob: bytes
    namespace: str
    hash_algorithm: str
    signature_type: str
    signature: bytes


def parse_signature(signature: bytes) -> _Signature:
    try:
        reader = _Reader(_dearmor(signature, _SIG_BEGIN, _SIG_END))
        if reader.take(6) != _SIG_MAGIC:
            raise ValueError("missing SSHSIG magic")
        version = reader.uint32()
        if version != _SIG_VERSION:
            raise ValueError(f"unsupported SSHSIG version {version}")
        public_blob, namespace = reader.string(), reader.text()
        reader.string()  # reserved
        hash_algorithm = reader.text()
        inner = _Reader(reader.string())
        signature_type, raw = inner.text(), inner.string()
        if not reader.done() or not inner.done():
            raise ValueError("trailing bytes")
    except (ValueError, binascii.Error, UnicodeDecodeError) as err:
        raise _invalid(f"The signature is not a valid SSH signature ({err}).", "malformed") from err
    return _Signature(public_blob, namespace, hash_algorithm, signature_type, raw)


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
        raise _invalid(
            f"The signature was made for namespace '{parsed.namespace}', not '{namespace}'; it does not "
            f"sign a record. Sign with namespace '{namespace}'.", "malformed",
        )
    if parsed.hash_algorithm not in _HASHES:
        raise _invalid(f"The signature uses hash '{parsed.hash_algorithm}'; only sha512 and sha256 exist in "
                       f"SSHSIG.", "malformed")
    try:
        public_key = ed25519_from_blob(parsed.public_blob)
    except ValueError as err:
        raise _invalid(f"The signing key cannot be checked: {err}. Re-sign with an Ed25519 key.",
                       "malformed") from err
    if parsed.signature_type != _KEY_TYPE:
        raise _invalid(f"The signature type {parsed.signature_type} does not match the ssh-ed25519 key.",
                       "malformed")
    digest = _HASHES[parsed.hash_algorithm](data).digest()
    try:
        public_key.verify(parsed.signature, _signed_data(namespace, parsed.hash_algorithm, digest))
    except InvalidSignature:
        key_fp = fingerprint(format_public_line(parsed.public_blob))
        raise _invalid(
            f"The signature by key {key_fp} does not match the signed file: the file or the signature was "
            f"changed after signing.", "tampered",
        ) from None
    return _trusted_principal(parsed.public_blob, Path(allowed_signers), namespace)


# --- allowed_signers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _AllowedSigner:
    line_number: int
    principals: str
    options: dict[str, str | bool]
    key_blob: bytes


_KEY_TYPE_PREFIXES = ("ssh-", "ecdsa-", "sk-", "rsa-")


def _next_token(line: str) -> tuple[str, str]:
    """Split off the first blank-delimited token; one that starts with a quote runs to the closing quote."""
    line = line.lstrip(" \t")
    if line.startswith('"'):
        end = line.find('"', 1)
        if end < 0:
            raise ValueError("unterminated quote")
        return line[1:end], line[end + 1:]
    match = re.match(r"[^ \t]+", line)
    if not match:
        raise ValueError("missing field")
    return match.group(0), line[match.end():]


def _split_options(line: str) -> tuple[str, str]:
    """Split off the options field: up to the first blank outside double quotes (backslash escapes)."""
    line = line.lstrip(" \t")
    quoted, i = False, 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quoted and i + 1 < len(line) and line[i + 1] == '"':
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in " \t" and not quoted:
            break
        i += 1
    if quoted:
        raise ValueError("unterminated quote in options")
    return line[:i], line[i:]


def _parse_options(text: str) -> dict[str, str | bool]:
    options: dict[str, str | bool] = {}
    for item in re.findall(r'(?:[^,"]|"(?:\\.|[^"\\])*")+', text):
        name, sep, value = item.partition("=")
        if sep:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"')
            options[name.strip().lower()] = value
        else:
            options[name.strip().lower()] = True
    return options


def _read_key_field(rest: str) -> bytes:
    parts = rest.split()
    if len(parts) < 2 or not parts[0].startswith(_KEY_TYPE_PREFIXES):
        raise ValueError("no public key")
    return parse_public_line(f"{parts[0]} {parts[1]}")


def _parse_allowed_signers(path: Path) -> list[_AllowedSigner]:
    """Parse an allowed_signers file as ssh-keygen(1) describes it; unreadable lines are logged and skipped.

    Format: ``principals [options] keytype base64 [comment]``; principals is a comma list of patterns,
    options a comma list such as ``namespaces="a,b"``, ``cert-authority``, ``valid-after="20240101"``.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return []
    # Verifying an archive checks thousands of signatures against one file: parse it once per version
    # (inode, size and nanosecond mtime: an edit, even of the same length, gives a new mtime).
    stamp = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
    cached = _TRUST_CACHE.get(stamp[0])
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = _parse_allowed_signers_text(path, text)
    _TRUST_CACHE[stamp[0]] = (stamp, entries)
    return entries


_TRUST_CACHE: dict[str, tuple[tuple, list[_AllowedSigner]]] = {}


def _parse_allowed_signers_text(path: Path, text: str) -> list[_AllowedSigner]:
    entries = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            principals, rest = _next_token(line)
            try:
                blob, options = _read_key_field(rest), {}
            except ValueError:
                option_text, rest = _split_options(rest)
                blob, options = _read_key_field(rest), _parse_options(option_text)
        except ValueError as err:
            log.warning("%s:%d: skipping unreadable allowed_signers line (%s)", path, number, err)
            continue
        entries.append(_AllowedSigner(number, principals, options, blob))
    return entries


@functools.lru_cache(maxsize=1024)
def _pattern_regex(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def _pattern_matches(value: str, pattern: str) -> bool:
    return _pattern_regex(pattern).fullmatch(value) is not None


def _match_pattern_list(value: str, patterns: str) -> bool:
    """OpenSSH's match_pattern_list: true when a pattern matches and no negated (!) pattern does."""
    matched = False
    for pattern in (p.strip() for p in patterns.split(",")):
        if not pattern:
            continue
        if pattern.startswith("!"):
            if _pattern_matches(value, pattern[1:]):
                return False
        elif _pattern_matches(value, pattern):
            matched = True
    return matched


def _parse_time(value: str) -> datetime:
    """ssh-keygen's YYYYMMDD[HHMM[SS]][Z]: UTC with a trailing Z, local time otherwise."""
    utc = value.upper().endswith("Z")
    digits = value[:-1] if utc else value
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if not digits.isdigit() or len(digits) not in formats:
        raise ValueError(f"invalid time {value!r}")
    moment = datetime.strptime(digits, formats[len(digits)])
    return moment.replace(tzinfo=UTC) if utc else moment.astimezone()


def _trusted_principal(public_blob: bytes, allowed_signers: Path, namespace: str) -> str:
    near_misses = []
    now = datetime.now(UTC)
    for entry in _parse_allowed_signers(allowed_signers):
        if entry.key_blob != public_blob:
            continue
        where = f"{allowed_signers}:{entry.line_number}"
        if entry.options.get("cert-authority"):
            # A CA line trusts certificates signed by the key, not signatures made with it directly.
            near_misses.append(f"{where} lists it as a cert-authority only")
            continue
        namespaces = entry.options.get("namespaces")
        if isinstance(namespaces, str) and not _match_pattern_list(namespace, namespaces):
            near_misses.append(f"{where} allows it for namespaces \"{namespaces}\" only")
            continue
        try:
            after = entry.options.get("valid-after")
            before = entry.options.get("valid-before")
            if isinstance(after, str) and now < _parse_time(after):
                near_misses.append(f"{where} trusts it only from {after}")
                continue
            if isinstance(before, str) and now > _parse_time(before):
                near_misses.append(f"{where} trusted it only until {before}")
                continue
        except ValueError as err:
            near_misses.append(f"{where} has an unreadable validity option ({err})")
            continue
        return entry.principals
    key_fp = fingerprint(format_public_line(public_blob))
    detail = "; ".join(near_misses) if near_misses else f"it is not listed in {allowed_signers}"
    raise _invalid(
        f"The signature is sound but key {key_fp} is not trusted for '{namespace}': {detail}. If you trust "
        f"this signer, add 'PRINCIPAL namespaces=\"{namespace}\" <public key>' to {allowed_signers}.",
        "untrusted",
    )


def add_allowed_signer(allowed_signers: Path, principal: str, public_key_line: str) -> None:
    """Trust ``public_key_line`` as ``principal`` for dbrunbook records; does nothing when already trusted.

    Appends ``principal namespaces="dbrunbook-record" ssh-ed25519 AAAA...``, creating the file if needed.

    Raises:
        ValueError: ``principal`` is empty or contains blanks, quotes or commas; the key line is unreadable.
    """
    if not principal or re.search(r'[\s",]', principal):
        raise ValueError(
            f"Principal {principal!r} cannot go in allowed_signers: use one word without blanks, quotes or "
            f"commas, such as alice@example.com."
        )
    allowed_signers = Path(allowed_signers)
    blob = parse_public_line(public_key_line.strip())
    for entry in _parse_allowed_signers(allowed_signers):
        namespaces = entry.options.get("namespaces")
        if (
            entry.key_blob == blob
            and _match_pattern_list(principal, entry.principals)
            and not entry.options.get("cert-authority")
            and (not isinstance(namespaces, str) or _match_pattern_list(SIGNATURE_NAMESPACE, namespaces))
        ):
            return
    allowed_signers.parent.mkdir(parents=True, exist_ok=True)
    existing = allowed_signers.read_text(encoding="utf-8") if allowed_signers.exists() else ""
    line = f'{principal} namespaces="{SIGNATURE_NAMESPACE}" {format_public_line(blob)}\n'
    with allowed_signers.open("a", encoding="utf-8") as handle:
        if existing and not existing.endswith("\n"):
            handle.write("\n")
        handle.write(line)


def principal_matches(principals: str, name: str) -> bool:
    """True when ``name`` (an operator) is one of an allowed_signers principals field's patterns."""
    return bool(name) and _match_pattern_list(name, principals)


def trusted_principal(public_key_line: str, allowed_signers: Path,
                      namespace: str = SIGNATURE_NAMESPACE) -> str | None:
    """The principals field that ``allowed_signers`` trusts this key under today, or None."""
    blob = parse_public_line(public_key_line.strip())
    try:
        return _trusted_principal(blob, Path(allowed_signers), namespace)
    except SignatureInvalid:
        return None
