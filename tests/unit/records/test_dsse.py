"""The DSSE envelope written beside each statement: PAE as the spec defines it, checked with the raw key."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dbrunbook import protocol, records
from dbrunbook.records import dsse, signing
from tests.unit.records.test_records import outputs, sealed_run  # noqa: F401 - fixtures


def test_pae_is_the_spec_example():
    # protocol.md of secure-systems-lab/dsse: PAE("http://example.com/HelloWorld", "hello world")
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_envelope_is_checkable_with_the_plain_ed25519_key(key):
    body = b'{"_type":"https://in-toto.io/Statement/v1"}\n'
    document = json.loads(dsse.envelope(body, key))
    assert document["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(document["payload"]) == body
    [entry] = document["signatures"]
    line = signing.public_key_line(key)
    assert entry["keyid"] == signing.fingerprint(line)
    # What any DSSE verifier does with the 32-byte key inside the ssh-ed25519 line: no OpenSSH involved.
    raw = base64.b64decode(line.split()[1])[-32:]
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(entry["sig"]),
                                                   dsse.pae(document["payloadType"], body))
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(entry["sig"]),
                                                       dsse.pae(document["payloadType"], body + b" "))
    assert dsse.verify_envelope(dsse.envelope(body, key), line, body) == []


def test_a_record_carries_its_envelope_and_a_swapped_one_is_tampered(sealed_run, allowed_signers, key, tmp_path):  # noqa: F811 - the fixture
    envelope = sealed_run / dsse.DSSE_FILE
    body = (sealed_run / protocol.STATEMENT_FILE).read_bytes()
    assert base64.b64decode(json.loads(envelope.read_bytes())["payload"]) == body
    assert records.verify_record(sealed_run, allowed_signers).status == "valid"

    other = signing.generate_key(tmp_path / "other", "mallory@example.com")
    envelope.chmod(0o644)
    envelope.write_bytes(dsse.envelope(body, other))
    check = records.verify_record(sealed_run, allowed_signers)
    assert check.status == "tampered"
    assert check.problems == (f"{dsse.DSSE_FILE} has no valid signature by "
                              f"{signing.fingerprint(signing.public_key_line(key))} over its payload.",)
