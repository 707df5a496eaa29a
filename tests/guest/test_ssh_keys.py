"""Key helpers and SSHTarget validation (no server needed)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ruddervirt.guest.ssh import SSHTarget, fingerprint, generate_keypair, load_private_key

PEM = serialization.Encoding.PEM
FORMATS = serialization.PrivateFormat


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key for all format tests: generating one is slow."""
    return rsa.generate_private_key(65537, 2048)


def _pem(key: object, fmt: serialization.PrivateFormat, password: bytes | None = None) -> str:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(PEM, fmt, encryption).decode()  # type: ignore[attr-defined]


def test_generated_keypair_is_ed25519_and_halves_match() -> None:
    private, public = generate_keypair()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    key = load_private_key(private)
    assert isinstance(key, paramiko.Ed25519Key)
    kind, blob, comment = public.split(" ")
    assert (kind, blob, comment) == ("ssh-ed25519", key.get_base64(), "ruddervirt-build")


def test_generated_keypairs_differ() -> None:
    assert generate_keypair()[0] != generate_keypair()[0]


@pytest.mark.parametrize(
    ("make_key", "fmt", "expected"),
    [
        (ed25519.Ed25519PrivateKey.generate, FORMATS.OpenSSH, paramiko.Ed25519Key),
        (ed25519.Ed25519PrivateKey.generate, FORMATS.PKCS8, paramiko.Ed25519Key),
        (_rsa_key, FORMATS.TraditionalOpenSSL, paramiko.RSAKey),
        (_rsa_key, FORMATS.PKCS8, paramiko.RSAKey),
        (_rsa_key, FORMATS.OpenSSH, paramiko.RSAKey),
        (
            lambda: ec.generate_private_key(ec.SECP256R1()),
            FORMATS.TraditionalOpenSSL,
            paramiko.ECDSAKey,
        ),
        (lambda: ec.generate_private_key(ec.SECP384R1()), FORMATS.OpenSSH, paramiko.ECDSAKey),
    ],
)
def test_load_private_key_accepts_openssh_and_pem(make_key, fmt, expected) -> None:
    crypto_key = make_key()
    key = load_private_key(_pem(crypto_key, fmt))
    assert isinstance(key, expected)
    public_blob = crypto_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert key.get_base64() == public_blob.split()[1].decode()


def test_load_private_key_with_password() -> None:
    crypto_key = ed25519.Ed25519PrivateKey.generate()
    text = _pem(crypto_key, FORMATS.OpenSSH, password=b"s3cret")
    assert isinstance(load_private_key(text, password="s3cret"), paramiko.Ed25519Key)
    with pytest.raises(ValueError, match="cannot load private key"):
        load_private_key(text)


def test_load_private_key_rejects_garbage_without_echoing_it() -> None:
    text = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nTOPSECRETMATERIAL\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    with pytest.raises(ValueError) as caught:
        load_private_key(text)
    assert "TOPSECRETMATERIAL" not in str(caught.value)


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    private, public = generate_keypair()
    (tmp_path / "key.pub").write_text(public + "\n")
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "key.pub")],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert fingerprint(load_private_key(private)) == listing.split()[1]


def test_target_parses_key_text_and_hides_secrets_from_repr() -> None:
    private, _ = generate_keypair()
    target = SSHTarget(port=2222, username="root", private_key=private, password="pw")
    assert isinstance(target.private_key, paramiko.Ed25519Key)
    assert "pw" not in repr(target).replace("port", "")
    assert target.address == "127.0.0.1:2222"


@pytest.mark.parametrize("host", ["10.0.2.15", "192.168.1.1", "8.8.8.8"])
def test_target_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="not a loopback"):
        SSHTarget(port=22, username="root", password="x", host=host)


def test_target_accepts_ipv6_loopback() -> None:
    assert SSHTarget(port=22, username="root", password="x", host="::1").host == "::1"


def test_target_needs_a_credential() -> None:
    with pytest.raises(ValueError, match="private key or a password"):
        SSHTarget(port=22, username="root")
