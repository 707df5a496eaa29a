"""SSH keys: a fresh build key pair, loading a private key, OpenSSH-style fingerprints."""

from __future__ import annotations

import base64
import hashlib
import io

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def generate_keypair(comment: str = "ruddervirt-build") -> tuple[str, str]:
    """Return a fresh ed25519 key pair: (private key in OpenSSH PEM format, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    return private, f"{public} {comment}" if comment else public


_PARAMIKO_CLASSES: tuple[tuple[type, type[paramiko.PKey]], ...] = (
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (rsa.RSAPrivateKey, paramiko.RSAKey),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
)


def load_private_key(text: str | bytes, password: str | None = None) -> paramiko.PKey:
    """Parse an ed25519, RSA or ECDSA private key in OpenSSH or PEM (PKCS#1/#8, SEC1) format.

    Raises ValueError with a message that never contains key material.
    """
    data = text.encode("utf-8") if isinstance(text, str) else text
    secret = password.encode("utf-8") if password is not None else None
    key: object
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, secret)
        else:
            key = serialization.load_pem_private_key(data, secret)
    except TypeError as exc:  # cryptography's way of saying "password missing / not needed"
        raise ValueError(f"cannot load private key: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a usable private key: {exc}") from None
    for crypto_type, paramiko_type in _PARAMIKO_CLASSES:
        if isinstance(key, crypto_type):
            # Re-serialise to the OpenSSH format, the one every paramiko key class reads.
            openssh = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            )
            return paramiko_type.from_private_key(io.StringIO(openssh.decode("ascii")))
    raise ValueError(f"unsupported key type {type(key).__name__}: use ed25519, RSA or ECDSA")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key, e.g. ``SHA256:abc...``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")
