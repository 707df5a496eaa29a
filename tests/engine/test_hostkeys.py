"""New SSH host keys made on the host for a warm clone, and the program that installs them
in the guest, run here on a folder of its own (never the host's /etc/ssh)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from ruddervirt.engine import hostkeys


def members(archive: bytes) -> dict[str, tuple[int, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: (m.mode, tar.extractfile(m).read()) for m in tar.getmembers()}  # type: ignore[union-attr]


def test_the_archive_holds_a_working_key_pair_of_each_kind_asked_for_and_known():
    files = members(hostkeys.archive(["ed25519", "rsa", "ecdsa", "dsa"], "root@web"))

    assert sorted(files) == sorted(
        f"ssh_host_{kind}_key{ext}" for kind in hostkeys.KINDS for ext in ("", ".pub")
    )  # DSA is not made: ssh-keygen -A no longer makes it either
    for kind in hostkeys.KINDS:
        mode, private = files[f"ssh_host_{kind}_key"]
        pub_mode, public = files[f"ssh_host_{kind}_key.pub"]
        assert (mode, pub_mode) == (0o600, 0o644)
        key = load_ssh_private_key(private, password=None)
        algorithm, blob, comment = public.decode().split()
        assert comment == "root@web" and public.endswith(b"\n")
        assert algorithm.startswith(
            {"rsa": "ssh-rsa", "ecdsa": "ecdsa-", "ed25519": "ssh-ed"}[kind]
        )
        assert (
            key.public_key()
            .public_bytes(  # type: ignore[union-attr]
                hostkeys.serialization.Encoding.OpenSSH, hostkeys._PUBLIC
            )
            .decode()
            == f"{algorithm} {blob}"
        )
    assert load_ssh_private_key(files["ssh_host_rsa_key"][1], None).key_size == 3072  # type: ignore[union-attr]


def test_every_archive_has_keys_of_its_own():
    first, second = (members(hostkeys.archive(["ed25519"], "c")) for _ in range(2))
    assert first["ssh_host_ed25519_key"] != second["ssh_host_ed25519_key"]


def test_no_known_kind_is_an_error():
    with pytest.raises(ValueError, match="no host key kind"):
        hostkeys.archive(["dsa"], "c")


def install(folder: Path, archive: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = ["/bin/sh", "-c", hostkeys.INSTALL_SCRIPT, "rudder-keys", str(folder), "no-reload"]
    return subprocess.run(argv, input=archive, capture_output=True, timeout=30, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="the program sets root as the keys' owner")
def test_the_install_program_replaces_the_old_keys_with_the_right_modes(tmp_path):
    (tmp_path / "sshd_config").write_text("keep me\n")
    for name in ("ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_dsa_key"):
        (tmp_path / name).write_text("old\n")
    archive = hostkeys.archive(["rsa", "ed25519"], "root@web")

    done = install(tmp_path, archive)

    assert (done.returncode, done.stdout, done.stderr) == (0, b"host-keys\n", b"")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
        "sshd_config",
    ]  # fmt: skip  (and no staging folder left behind)
    files = members(archive)
    for name, (mode, data) in files.items():
        path = tmp_path / name
        assert path.read_bytes() == data
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, 0, 0)


def test_a_broken_archive_leaves_the_old_keys_in_place(tmp_path):
    (tmp_path / "ssh_host_ed25519_key").write_text("old\n")

    done = install(tmp_path, b"not a tar archive" * 40)

    assert done.returncode != 0
    assert [p.name for p in tmp_path.iterdir()] == ["ssh_host_ed25519_key"]
    assert (tmp_path / "ssh_host_ed25519_key").read_text() == "old\n"
