"""The allowed_signers trust file, read as ssh-keygen(1) reads it: who is trusted, for what, and when.

``ssh-keygen -Y verify`` and dbrunbook must agree on what a trust file trusts, so its lines are parsed the way
the ALLOWED SIGNERS section of ssh-keygen(1) describes: principal patterns with negation, quoted options,
``namespaces``, ``cert-authority``, ``valid-after`` and ``valid-before``.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dbrunbook.errors import SignatureInvalid
from dbrunbook.protocol import SIGNATURE_NAMESPACE
from dbrunbook.records.keys import fingerprint, format_public_line, parse_public_line

__all__ = ["add_allowed_signer", "principal_matches", "trusted_principal"]

log = logging.getLogger(__name__)


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


def _parse_keygen_time(value: str) -> datetime:
    """ssh-keygen's YYYYMMDD[HHMM[SS]][Z]: UTC with a trailing Z, local time otherwise."""
    utc = value.upper().endswith("Z")
    digits = value[:-1] if utc else value
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    if not digits.isdigit() or len(digits) not in formats:
        raise ValueError(f"invalid time {value!r}")
    moment = datetime.strptime(digits, formats[len(digits)])
    return moment.replace(tzinfo=UTC) if utc else moment.astimezone()


def check_trusted(public_blob: bytes, allowed_signers: Path, namespace: str) -> str:
    """The principals field of the first allowed_signers line that trusts the key for ``namespace`` today.

    Raises:
        SignatureInvalid: status "untrusted", naming the lines that list the key but do not trust it here.
    """
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
            if isinstance(after, str) and now < _parse_keygen_time(after):
                near_misses.append(f"{where} trusts it only from {after}")
                continue
            if isinstance(before, str) and now > _parse_keygen_time(before):
                near_misses.append(f"{where} trusted it only until {before}")
                continue
        except ValueError as err:
            near_misses.append(f"{where} has an unreadable validity option ({err})")
            continue
        return entry.principals
    key_fp = fingerprint(format_public_line(public_blob))
    detail = "; ".join(near_misses) if near_misses else f"it is not listed in {allowed_signers}"
    raise SignatureInvalid(
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
        return check_trusted(blob, Path(allowed_signers), namespace)
    except SignatureInvalid:
        return None
