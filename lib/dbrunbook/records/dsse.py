"""The statement as a DSSE envelope, beside its detached SSH signature, for in-toto tooling.

``statement.json.sig`` (SSHSIG) is what ``ssh-keygen -Y verify`` checks; in-toto and SLSA tools read
attestations as DSSE envelopes (https://github.com/secure-systems-lab/dsse, ``envelope.md``/``protocol.md``)::

    {"payloadType": "application/vnd.in-toto+json", "payload": base64(statement.json),
     "signatures": [{"keyid": "SHA256:…", "sig": base64(Ed25519 signature of PAE(payloadType, payload))}]}

The signature is a plain Ed25519 signature over DSSE's pre-authentication encoding
``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` made with the same key as the SSHSIG, so any DSSE
verifier given that Ed25519 public key (the 32 bytes inside the ``ssh-ed25519`` line) can check it. The
``keyid`` is the key's OpenSSH fingerprint, the name allowed_signers and ``ssh-keygen -l`` show.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.exceptions import InvalidSignature

from dbrunbook.records import keys, wire

__all__ = ["DSSE_FILE", "PAYLOAD_TYPE", "envelope", "pae", "verify_envelope"]

DSSE_FILE = "statement.dsse.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is signed, binding the payload to its type."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def envelope(payload: bytes, key_path: Path, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The DSSE envelope (JSON, one trailing newline) of ``payload`` signed with an OpenSSH Ed25519 key file.

    Raises:
        SigningKeyError: the key cannot sign.
    """
    key = keys.load_key(Path(key_path))
    signature = key.private_key.sign(pae(payload_type, payload))
    keyid = keys.fingerprint(keys.format_public_line(key.public_blob))
    document = {"payloadType": payload_type, "payload": base64.b64encode(payload).decode("ascii"),
                "signatures": [{"keyid": keyid, "sig": base64.b64encode(signature).decode("ascii")}]}
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


def verify_envelope(data: bytes, public_key_line: str, expected_payload: bytes | None = None) -> list[str]:
    """Problems with a DSSE envelope checked against an ``ssh-ed25519`` public key ([] when it holds).

    ``expected_payload``: the bytes the envelope must carry (statement.json as it is on disk).
    """
    try:
        document = json.loads(data)
        payload = base64.b64decode(document["payload"], validate=True)
        payload_type = document["payloadType"]
        signatures = document["signatures"]
    except (ValueError, KeyError, TypeError) as err:
        return [f"{DSSE_FILE} is not a DSSE envelope ({err})."]
    problems = []
    if payload_type != PAYLOAD_TYPE:
        problems.append(f"{DSSE_FILE} has payloadType {payload_type!r}, not {PAYLOAD_TYPE!r}.")
    if expected_payload is not None and payload != expected_payload:
        problems.append(f"{DSSE_FILE} carries another statement than statement.json.")
    public_key = wire.ed25519_from_blob(keys.parse_public_line(public_key_line))
    keyid = keys.fingerprint(public_key_line)
    for entry in signatures if isinstance(signatures, list) else []:
        try:
            public_key.verify(base64.b64decode(entry["sig"], validate=True), pae(payload_type, payload))
        except (InvalidSignature, KeyError, TypeError, ValueError):
            continue
        return problems
    problems.append(f"{DSSE_FILE} has no valid signature by {keyid} over its payload.")
    return problems
