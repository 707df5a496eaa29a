"""New SSH host keys for a restored warm clone, made on the host.

A guest under TCG needs ~10 s of emulated CPU for one RSA-3072 key (measured on the Debian
test image: ssh-keygen -t rsa 10.0 s, ecdsa 0.8 s, ed25519 0.8 s), and a warm class restores
thirty guests at once. The host makes the same keys natively in milliseconds, so
engine.identity asks the guest which kinds it has, makes them here, and hands them over as a
tar archive on the standard input of :data:`INSTALL_SCRIPT` (through the guest agent, never
over the network). The host is trusted with the guest's disks already; the keys are never
logged or written to the host's disk.
"""

from __future__ import annotations

import io
import tarfile
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

# The kinds `ssh-keygen -A` makes on the OpenSSH of current distributions (DSA is gone):
# a guest's keys of any other kind are removed, as `rm ssh_host_*; ssh-keygen -A` would.
KINDS = ("rsa", "ecdsa", "ed25519")
RSA_BITS = 3072  # ssh-keygen's default
_PRIVATE = serialization.PrivateFormat.OpenSSH
_PUBLIC = serialization.PublicFormat.OpenSSH

# /bin/sh -c INSTALL_SCRIPT rudder-keys DIR reload|no-reload, the archive on stdin: unpacked
# into a fresh folder beside the old keys first, so a broken archive leaves them in place;
# then the old keys replaced, owner and modes set as sshd requires, SELinux labels restored
# where there are any, and the SSH server told to read its keys again (a reload: sshd re-execs
# itself on SIGHUP, faster than a restart). Fixed text: nothing in it comes from a user.
INSTALL_SCRIPT = r"""
set -e
dir=$1
new=$(mktemp -d "$dir/.rudder-keys.XXXXXX")
trap 'rm -rf "$new"' EXIT
tar -x -f - -C "$new"
ls "$new"/ssh_host_*_key >/dev/null
rm -f "$dir"/ssh_host_*
for f in "$new"/ssh_host_*; do mv "$f" "$dir/"; done
chown root:root "$dir"/ssh_host_*
chmod 600 "$dir"/ssh_host_*_key
chmod 644 "$dir"/ssh_host_*_key.pub
if command -v restorecon >/dev/null 2>&1; then restorecon "$dir"/ssh_host_* || true; fi
if [ "$2" = reload ]; then
  if command -v systemctl >/dev/null 2>&1; then
    systemctl try-reload-or-restart ssh.service >/dev/null 2>&1 || true
  else
    service ssh reload >/dev/null 2>&1 || true
  fi
fi
echo host-keys
"""


def archive(kinds: list[str], comment: str) -> bytes:
    """A tar archive of new host keys (``ssh_host_<kind>_key`` and ``.pub``) of those of
    `kinds` that are in :data:`KINDS`, each public key ending in `comment`; raises
    ValueError when none of `kinds` is one this makes."""
    made = [kind for kind in KINDS if kind in kinds]
    if not made:
        raise ValueError(f"no host key kind this makes among {kinds!r}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for kind in made:
            private, public = _pair(kind)
            _add(tar, f"ssh_host_{kind}_key", private, 0o600)
            _add(tar, f"ssh_host_{kind}_key.pub", public + b" " + comment.encode() + b"\n", 0o644)
    return buffer.getvalue()


def _pair(kind: str) -> tuple[bytes, bytes]:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    elif kind == "ecdsa":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, _PRIVATE, serialization.NoEncryption())
    return private, key.public_key().public_bytes(serialization.Encoding.OpenSSH, _PUBLIC)


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    tar.addfile(info, io.BytesIO(data))
