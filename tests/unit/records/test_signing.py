"""SSHSIG signing and verification, allowed_signers parsing, and interoperability with stock ssh-keygen."""

from __future__ import annotations

import base64
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dbrunbook.errors import ConfigError, SignatureInvalid
from dbrunbook.protocol import SIGNATURE_NAMESPACE
from dbrunbook.records import signing
from tests.tools import needs_tool

SSH_KEYGEN = shutil.which("ssh-keygen")
needs_ssh_keygen = needs_tool("ssh-keygen", "openssh-client")
MESSAGE = b'{"_type":"https://in-toto.io/Statement/v1"}\n'


@pytest.fixture
def alice_key(tmp_path) -> Path:
    return signing.generate_key(tmp_path / "keys" / "alice_ed25519", "alice@example.com")


@pytest.fixture
def allowed_signers(tmp_path, alice_key) -> Path:
    path = tmp_path / "allowed_signers"
    signing.add_allowed_signer(path, "alice@example.com", signing.public_key_line(alice_key))
    return path


def _key_blob(key_path: Path) -> str:
    return signing.public_key_line(key_path).split()[1]


# --- keys -----------------------------------------------------------------------------------------------
def test_generate_key_writes_private_key_0600_and_public_line(alice_key):
    pub = alice_key.with_name("alice_ed25519.pub")
    assert alice_key.stat().st_mode & 0o777 == 0o600
    assert alice_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    line = signing.public_key_line(alice_key)
    assert line.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI")
    assert line.endswith(" alice@example.com")
    assert pub.read_text() == line + "\n"
    assert signing.public_key_line(pub) == line


def test_generate_key_refuses_to_overwrite(alice_key):
    before = alice_key.read_bytes()
    with pytest.raises(signing.SigningKeyError) as info:
        signing.generate_key(alice_key, "mallory")
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == (f"Signing key {alice_key}: already exists; refusing to overwrite a key. "
                               f"Use that key, or move it away first if you really mean to replace it.")
    assert alice_key.read_bytes() == before


def test_fingerprint_is_sha256_of_the_key_blob_without_padding(alice_key):
    line = signing.public_key_line(alice_key)
    blob = base64.b64decode(line.split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert signing.fingerprint(line) == expected
    assert len(expected) == len("SHA256:") + 43


def test_missing_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(signing.SigningKeyError) as info:
        signing.sign(MESSAGE, tmp_path / "nope")
    assert str(info.value).startswith(f"Signing key {tmp_path / 'nope'}: no such file. Create an unencrypted "
                                      f"Ed25519 key with 'dbrunbook keygen'")


def _ssh_string(value: bytes | str) -> bytes:
    value = value.encode() if isinstance(value, str) else value
    return struct.pack(">I", len(value)) + value


def test_encrypted_key_is_refused_with_what_to_do(tmp_path):
    # The header of a passphrase-protected OpenSSH key: what matters is that it names a cipher and a kdf.
    blob = (b"openssh-key-v1\x00" + _ssh_string("aes256-ctr") + _ssh_string("bcrypt")
            + _ssh_string(_ssh_string(b"salt" * 4) + struct.pack(">I", 16)) + struct.pack(">I", 1))
    key = tmp_path / "encrypted"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n" + base64.b64encode(blob).decode()
                   + "\n-----END OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(signing.SigningKeyError) as info:
        signing.sign(MESSAGE, key)
    assert str(info.value) == (
        f"Signing key {key}: is protected by a passphrase (cipher aes256-ctr, kdf bcrypt); dbrunbook runs "
        f"unattended and cannot prompt for it. Use a dedicated unencrypted key for records: "
        f"'dbrunbook keygen' (or ssh-keygen -t ed25519 -N '' -f PATH), kept readable by the operator only."
    )


def test_rsa_key_is_refused(tmp_path):
    key = tmp_path / "id_rsa"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    with pytest.raises(signing.SigningKeyError) as info:
        signing.sign(MESSAGE, key)
    assert f"Signing key {key}: is a ssh-rsa key; dbrunbook signs with Ed25519 keys only." in str(info.value)


def test_pem_key_is_not_an_openssh_private_key(tmp_path):
    key = tmp_path / "id.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    expected = r"is not an OpenSSH private key \(found -----BEGIN PRIVATE KEY"
    with pytest.raises(signing.SigningKeyError, match=expected):
        signing.sign(MESSAGE, key)


# --- signatures -----------------------------------------------------------------------------------------
def test_sign_verify_round_trip(alice_key, allowed_signers):
    signature = signing.sign(MESSAGE, alice_key)
    lines = signature.decode().splitlines()
    assert lines[0] == "-----BEGIN SSH SIGNATURE-----" and lines[-1] == "-----END SSH SIGNATURE-----"
    assert all(len(line) <= 70 for line in lines[1:-1]) and len(lines[1]) == 70
    assert base64.b64decode("".join(lines[1:-1]))[:6] == b"SSHSIG"
    assert signing.verify(MESSAGE, signature, allowed_signers) == "alice@example.com"


def test_signatures_are_deterministic(alice_key):
    # Ed25519 is deterministic: same key and data give the same bytes, which makes interop checks exact.
    assert signing.sign(MESSAGE, alice_key) == signing.sign(MESSAGE, alice_key)


def test_changed_data_is_tampered(alice_key, allowed_signers):
    signature = signing.sign(MESSAGE, alice_key)
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE.replace(b"v1", b"v2"), signature, allowed_signers)
    assert info.value.status == "tampered"
    fp = signing.fingerprint(signing.public_key_line(alice_key))
    assert str(info.value) == (f"The signature by key {fp} does not match the signed file: the file or the "
                               f"signature was changed after signing.")


def test_key_not_in_allowed_signers_is_untrusted(tmp_path, alice_key, allowed_signers):
    mallory = signing.generate_key(tmp_path / "mallory", "mallory@example.com")
    signature = signing.sign(MESSAGE, mallory)
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE, signature, allowed_signers)
    assert info.value.status == "untrusted"
    fp = signing.fingerprint(signing.public_key_line(mallory))
    assert str(info.value).startswith(
        f"The signature is sound but key {fp} is not trusted for '{SIGNATURE_NAMESPACE}': it is not listed "
        f"in {allowed_signers}."
    )


def test_missing_allowed_signers_file_means_untrusted(tmp_path, alice_key):
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE, signing.sign(MESSAGE, alice_key), tmp_path / "absent")
    assert info.value.status == "untrusted"


def test_other_namespace_is_malformed(alice_key, allowed_signers):
    signature = signing.sign(MESSAGE, alice_key, namespace="git")
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE, signature, allowed_signers)
    assert info.value.status == "malformed"
    assert str(info.value) == ("The signature was made for namespace 'git', not 'dbrunbook-record'; it does "
                               "not sign a record. Sign with namespace 'dbrunbook-record'.")


@pytest.mark.parametrize("garbage", [
    b"",
    b"not a signature",
    b"-----BEGIN SSH SIGNATURE-----\n!!!!\n-----END SSH SIGNATURE-----\n",
    b"-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(b"SSHSIG\x00\x00\x00\x02")
    + b"\n-----END SSH SIGNATURE-----\n",
])
def test_garbage_signature_is_malformed(garbage, allowed_signers):
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE, garbage, allowed_signers)
    assert info.value.status == "malformed"
    assert str(info.value).startswith("The signature is not a valid SSH signature (")


# --- allowed_signers ------------------------------------------------------------------------------------
def test_add_allowed_signer_is_idempotent(tmp_path, alice_key):
    path = tmp_path / "sub" / "allowed_signers"
    line = signing.public_key_line(alice_key)
    signing.add_allowed_signer(path, "alice@example.com", line)
    signing.add_allowed_signer(path, "alice@example.com", line)
    key_type, key_base64 = line.split()[:2]
    assert path.read_text() == f'alice@example.com namespaces="dbrunbook-record" {key_type} {key_base64}\n'


def test_add_allowed_signer_refuses_principal_with_blanks(tmp_path, alice_key):
    with pytest.raises(ValueError, match="Principal 'alice smith' cannot go in allowed_signers"):
        signing.add_allowed_signer(tmp_path / "as", "alice smith", signing.public_key_line(alice_key))


@pytest.mark.parametrize(("entry", "principal"), [
    ("alice@example.com {key}", "alice@example.com"),
    ('alice@example.com namespaces="dbrunbook-record" {key} a comment', "alice@example.com"),
    ('alice@example.com namespaces="git,dbrunbook-*" {key}', "alice@example.com"),
    ('"*@example.com,bob@x" {key}', "*@example.com,bob@x"),
    ('alice@example.com valid-after="20000101",valid-before="29991231Z" {key}', "alice@example.com"),
    ('ops NAMESPACES="dbrunbook-record" {key}', "ops"),
])
def test_allowed_signers_lines_that_trust(tmp_path, alice_key, entry, principal):
    path = tmp_path / "allowed_signers"
    path.write_text("# team signers\n\n" + entry.format(key=signing.public_key_line(alice_key)) + "\n")
    assert signing.verify(MESSAGE, signing.sign(MESSAGE, alice_key), path) == principal


@pytest.mark.parametrize(("entry", "reason"), [
    ('alice@example.com namespaces="git" {key}', 'allows it for namespaces "git" only'),
    ('alice@example.com namespaces="*,!dbrunbook-*" {key}', 'allows it for namespaces "*,!dbrunbook-*"'),
    ("alice@example.com cert-authority {key}", "lists it as a cert-authority only"),
    ('alice@example.com valid-before="20000101" {key}', "trusted it only until 20000101"),
    ('alice@example.com valid-after="29990101Z" {key}', "trusts it only from 29990101Z"),
    ("# alice@example.com {key}", "it is not listed in"),
])
def test_allowed_signers_lines_that_do_not_trust(tmp_path, alice_key, entry, reason):
    path = tmp_path / "allowed_signers"
    path.write_text(entry.format(key=signing.public_key_line(alice_key)) + "\n")
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE, signing.sign(MESSAGE, alice_key), path)
    assert info.value.status == "untrusted"
    assert reason in str(info.value)


def test_unreadable_lines_are_skipped(tmp_path, alice_key):
    path = tmp_path / "allowed_signers"
    path.write_text("garbage\nbob ssh-ed25519 !!!notbase64\n"
                    f"alice@example.com {signing.public_key_line(alice_key)}\n")
    assert signing.verify(MESSAGE, signing.sign(MESSAGE, alice_key), path) == "alice@example.com"


# --- interoperability with stock OpenSSH ---------------------------------------------------------------
def _ssh_keygen(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SSH_KEYGEN, *args], input=stdin, capture_output=True, timeout=60)


@needs_ssh_keygen
def test_ssh_keygen_accepts_our_signature(tmp_path, alice_key, allowed_signers):
    sig = tmp_path / "statement.json.sig"
    sig.write_bytes(signing.sign(MESSAGE, alice_key))
    result = _ssh_keygen("-Y", "verify", "-f", str(allowed_signers), "-I", "alice@example.com",
                         "-n", SIGNATURE_NAMESPACE, "-s", str(sig), stdin=MESSAGE)
    assert result.returncode == 0, result.stderr
    fp = signing.fingerprint(signing.public_key_line(alice_key))
    assert result.stdout.decode().strip() == (
        f'Good "{SIGNATURE_NAMESPACE}" signature for alice@example.com with ED25519 key {fp}'
    )


@needs_ssh_keygen
def test_ssh_keygen_rejects_our_signature_of_other_data(tmp_path, alice_key, allowed_signers):
    sig = tmp_path / "statement.json.sig"
    sig.write_bytes(signing.sign(MESSAGE, alice_key))
    result = _ssh_keygen("-Y", "verify", "-f", str(allowed_signers), "-I", "alice@example.com",
                         "-n", SIGNATURE_NAMESPACE, "-s", str(sig), stdin=MESSAGE + b" ")
    assert result.returncode != 0


@needs_ssh_keygen
def test_ssh_keygen_reads_our_key_files(alice_key):
    # Same public key derived by OpenSSH from our private key file, same fingerprint as ours.
    derived = _ssh_keygen("-y", "-f", str(alice_key))
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.decode().strip() == signing.public_key_line(alice_key)
    listed = _ssh_keygen("-l", "-f", str(alice_key.with_name("alice_ed25519.pub")))
    fp = signing.fingerprint(signing.public_key_line(alice_key))
    assert listed.stdout.decode().strip() == f"256 {fp} alice@example.com (ED25519)"


@needs_ssh_keygen
def test_we_verify_ssh_keygen_signatures_made_with_its_own_key(tmp_path):
    key = tmp_path / "bob_ed25519"
    made = _ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", "bob@example.com", "-f", str(key))
    assert made.returncode == 0, made.stderr
    message = tmp_path / "statement.json"
    message.write_bytes(MESSAGE)
    signed = _ssh_keygen("-Y", "sign", "-f", str(key), "-n", SIGNATURE_NAMESPACE, str(message))
    assert signed.returncode == 0, signed.stderr
    signature = (tmp_path / "statement.json.sig").read_bytes()
    allowed = tmp_path / "allowed_signers"
    signing.add_allowed_signer(allowed, "bob@example.com", key.with_name("bob_ed25519.pub").read_text())
    assert signing.verify(MESSAGE, signature, allowed) == "bob@example.com"
    assert signing.public_key_line(key) == key.with_name("bob_ed25519.pub").read_text().strip()
    # ... and its signature is byte for byte the one we make with the same key (Ed25519 is deterministic).
    assert signing.sign(MESSAGE, key) == signature
    with pytest.raises(SignatureInvalid) as info:
        signing.verify(MESSAGE + b"x", signature, allowed)
    assert info.value.status == "tampered"


@needs_ssh_keygen
def test_we_verify_ssh_keygen_signatures_made_with_our_key(tmp_path, alice_key, allowed_signers):
    message = tmp_path / "data"
    message.write_bytes(MESSAGE)
    signed = _ssh_keygen("-Y", "sign", "-f", str(alice_key), "-n", SIGNATURE_NAMESPACE, str(message))
    assert signed.returncode == 0, signed.stderr
    signature = (tmp_path / "data.sig").read_bytes()
    assert signing.verify(MESSAGE, signature, allowed_signers) == "alice@example.com"


@needs_ssh_keygen
def test_passphrase_key_made_by_ssh_keygen_is_refused(tmp_path):
    key = tmp_path / "locked"
    made = _ssh_keygen("-q", "-t", "ed25519", "-N", "correct horse", "-f", str(key))
    assert made.returncode == 0, made.stderr
    with pytest.raises(signing.SigningKeyError, match=r"is protected by a passphrase \(cipher aes256-ctr"):
        signing.sign(MESSAGE, key)


@needs_ssh_keygen
def test_ssh_keygen_agrees_on_trust_decisions(tmp_path, alice_key):
    # The same allowed_signers lines, read by both: namespaces option with a pattern, and cert-authority.
    line = signing.public_key_line(alice_key)
    sig = tmp_path / "m.sig"
    sig.write_bytes(signing.sign(MESSAGE, alice_key))
    for entry, trusted in [(f'alice@example.com namespaces="x,dbrunbook-*" {line}', True),
                           (f'alice@example.com namespaces="git" {line}', False),
                           (f'alice@example.com namespaces="*,!dbrunbook-*" {line}', False),
                           (f"*@example.com {line}", True),
                           (f"alice@example.com cert-authority {line}", False)]:
        path = tmp_path / "allowed_signers"
        path.write_text(entry + "\n")
        ours = True
        try:
            signing.verify(MESSAGE, sig.read_bytes(), path)
        except SignatureInvalid:
            ours = False
        theirs = _ssh_keygen("-Y", "verify", "-f", str(path), "-I", "alice@example.com", "-n",
                             SIGNATURE_NAMESPACE, "-s", str(sig), stdin=MESSAGE).returncode == 0
        assert (ours, theirs) == (trusted, trusted), entry
