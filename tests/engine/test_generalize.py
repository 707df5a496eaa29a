"""Generalization at capture on fakes: the script runs after the last step and before the
power-off, as root, its lines are logged and recorded; opting out skips it; a failure fails
the build."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ruddervirt.engine import generalize
from ruddervirt.engine.errors import BuildError
from ruddervirt.guest import fake
from ruddervirt.spec import CloudInitRecord, GeneralizationRecord
from tests.engine.buildkit import FakeBuild, manifest_text, vm_yaml

SHELL = '      - type: shell\n        shell: {inline: "echo hi"}\n'
REMOVED = (
    "emptied /etc/machine-id",
    "removed /var/lib/dhcp/dhclient.eth0.leases",
    "removed the build's SSH key from /home/debian/.ssh/authorized_keys",
)


@pytest.fixture
def build(tmp_path) -> FakeBuild:
    return FakeBuild(tmp_path)


def no_cloud_init(name: str, steps: str = "", extra: str = "") -> str:
    return vm_yaml(name, steps, extra=extra).replace("    cloudInit: {}\n", "")


def test_the_script_runs_as_root_after_the_last_step_and_before_the_power_off(build) -> None:
    guest = build.script("web", fake.run("echo hi"), build.generalized(*REMOVED), generalized=False)
    result = build.run(manifest_text(vm_yaml("web", SHELL)))
    ops = [(c.op, generalize.MARKER in c.data.decode()) for c in guest.calls]
    assert ops == [("wait", False), ("run", False), ("run", True), ("power_off", False)]
    call = guest.calls[2]
    assert call.what == "sh -s"  # the communicator is root: no sudo
    script = call.data.decode()
    assert "sed -i '/ ruddervirt-build-b1$/d'" in script
    assert "cloud-init clean --logs" in script and "gone /etc/ssh/ssh_host_*" in script
    assert call.timeout is not None and 0 < call.timeout <= generalize.TIMEOUT_S
    (vm,) = result.spec.vms
    assert vm.generalization == GeneralizationRecord(
        removed=REMOVED, host_keys=True, cloud_init=True
    )
    assert vm.cloud_init == CloudInitRecord(instance_id=None)  # every clone: a new instance
    text = build.reporter.text()
    assert "generalizing the guest for cloning, as root" in text
    assert all(line in text for line in REMOVED)
    assert "generalized: 3 item(s) removed" in text


def test_a_user_other_than_root_generalizes_through_sudo(build) -> None:
    guest = build.script("web")
    extra = "    communicator: {sshUsername: debian}\n"
    build.run(manifest_text(vm_yaml("web", extra=extra)))
    (call,) = [c for c in guest.calls if generalize.MARKER.encode() in c.data]
    assert call.what == "sudo -n sh -s"
    assert "generalizing the guest for cloning, as root (sudo -n from debian)" in (
        build.reporter.text()
    )


def test_without_cloud_init_the_host_keys_and_cloud_init_state_are_kept(build) -> None:
    guest = build.script("web")
    result = build.run(manifest_text(no_cloud_init("web")))
    (call,) = [c for c in guest.calls if generalize.MARKER.encode() in c.data]
    script = call.data.decode()
    assert "ssh_host_" not in script and "cloud-init" not in script
    assert "emptied /etc/machine-id" in script  # the rest is done all the same
    assert result.spec.vms[0].generalization == GeneralizationRecord(
        removed=(), host_keys=False, cloud_init=False
    )
    assert any("keeping the SSH host keys" in line for line in build.reporter.text())
    assert "generalized: nothing to remove" in build.reporter.text()


def test_generalize_false_skips_the_script_and_records_no_generalization(build) -> None:
    guest = build.script("web", generalized=False)  # a generalize call would not match
    result = build.run(manifest_text(vm_yaml("web", extra="    generalize: false\n")))
    guest.assert_done()
    assert not [c for c in guest.calls if generalize.MARKER.encode() in c.data]
    assert result.spec.vms[0].generalization is None
    # Its clones keep the build's cloud-init instance: cloud-init makes no new host keys.
    assert result.spec.vms[0].cloud_init == CloudInitRecord(instance_id="rvt-b1-web")
    assert (
        "not generalizing the guest (generalize: false): clones keep its identity"
        in build.reporter.text()
    )


def test_a_failing_script_fails_the_build_and_says_so(build) -> None:
    failing = build.generalized(
        "emptied /etc/machine-id", exit_status=1, stderr=["could not remove /etc/ssh/x"]
    )
    build.script("web", failing, fails=True)
    extra = "    communicator: {sshUsername: debian}\n"
    with pytest.raises(generalize.GeneralizationFailed) as failed:
        build.run(manifest_text(vm_yaml("web", extra=extra)))
    assert isinstance(failed.value, BuildError)
    assert str(failed.value).startswith(
        "VM web: generalizing the guest failed: the script exited with code 1"
    )
    assert "passwordless sudo" in str(failed.value)
    assert build.reporter.stream_of("could not remove /etc/ssh/x") == "stderr"
    assert "Failed" in build.reporter.phases() and build.hv.domains == {}
    build.guests["web"].assert_done()  # never powered off: the build failed


def test_a_lost_connection_during_the_script_fails_the_build(build) -> None:
    build.script("web", fake.drop_connection(generalize.MARKER), fails=True)
    with pytest.raises(generalize.GeneralizationFailed, match="connection to the fake guest"):
        build.run(manifest_text(vm_yaml("web")))


def test_a_script_that_hangs_fails_the_build_at_its_timeout(build, monkeypatch) -> None:
    monkeypatch.setattr(generalize, "TIMEOUT_S", 0.2)
    build.script("web", fake.run(generalize.MARKER, delay=30), fails=True)
    with pytest.raises(
        generalize.GeneralizationFailed, match=r"VM web: generalizing the guest timed out"
    ):
        build.run(manifest_text(vm_yaml("web")))


def test_the_script_only_takes_a_name_as_the_key_comment() -> None:
    for bad in ("b1$/d; rm -rf /", "B1", "", "a b"):
        with pytest.raises(ValueError, match="not a build key comment"):
            generalize.script(key_comment=bad, cloud_init=True)
    assert "ruddervirt-build-b7" in generalize.script(
        key_comment="ruddervirt-build-b7", cloud_init=False
    )


@pytest.mark.parametrize("shell", ["sh", "busybox"])  # dash, and the tiny guest's ash
@pytest.mark.parametrize("cloud_init", [True, False])
def test_the_script_is_valid_posix_sh(shell: str, cloud_init: bool) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    argv = [shell, "sh", "-n"] if shell == "busybox" else [shell, "-n"]
    text = generalize.script(key_comment="ruddervirt-build-b1", cloud_init=cloud_init)
    done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildBuildBuild ruddervirt-build-b1"
THEIR_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITheirTheirTheir teacher"


def busybox_root(tmp_path):
    """A folder with a static busybox and a guest's worth of files to generalize."""
    root = tmp_path / "guest"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(shutil.which("busybox"), root / "bin/busybox")
    listing = subprocess.run(
        ["busybox", "--list"], capture_output=True, text=True, timeout=10, check=True
    )
    for applet in listing.stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    files = {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/ssh/ssh_host_ed25519_key": "secret\n",
        "etc/ssh/ssh_host_ed25519_key.pub": "public\n",
        "etc/ssh/sshd_config": "PermitRootLogin no\n",
        "etc/network/interfaces.d/50-cloud-init": "auto rvmgmt\n",
        "var/lib/dhcp/dhclient.eth0.leases": "lease {}\n",
        "var/lib/systemd/random-seed": "entropy",
        "root/.ssh/authorized_keys": f"{THEIR_LINE}\n{KEY_LINE}\n",
        "home/debian/.ssh/authorized_keys": f"{KEY_LINE}\n",
        "home/debian/.bash_history": "ls\n",
        "root/.ash_history": "ls\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("busybox"), reason="root, busybox")
@pytest.mark.parametrize("cloud_init", [True, False])
def test_the_script_generalizes_a_busybox_guest_and_says_what_it_removed(tmp_path, cloud_init):
    root = busybox_root(tmp_path)
    text = generalize.script(key_comment="ruddervirt-build-b1", cloud_init=cloud_init)
    done = subprocess.run(
        ["/bin/busybox", "sh", "-s"], input=text, capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: os.chroot(root), env={"PATH": "/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (root / "etc/machine-id").read_text() == ""  # emptied, kept
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert (root / "root/.ssh/authorized_keys").read_text() == f"{THEIR_LINE}\n"
    assert (root / "home/debian/.ssh/authorized_keys").read_text() == ""
    for gone in ("var/lib/dhcp/dhclient.eth0.leases", "home/debian/.bash_history"):
        assert not (root / gone).exists()
    assert (root / "etc/ssh/sshd_config").exists()
    expected = [
        "emptied /etc/machine-id",
        "removed /var/lib/dbus/machine-id",
        "removed /var/lib/systemd/random-seed",
        "removed /var/lib/dhcp/dhclient.eth0.leases",
        "removed /root/.ash_history",
        "removed /home/debian/.bash_history",
        "removed the build's SSH key from /root/.ssh/authorized_keys",
        "removed the build's SSH key from /home/debian/.ssh/authorized_keys",
    ]
    if cloud_init:  # no cloud-init command here: its clean is skipped
        expected += [
            "removed /etc/network/interfaces.d/50-cloud-init",
            "removed /etc/ssh/ssh_host_ed25519_key",
            "removed /etc/ssh/ssh_host_ed25519_key.pub",
        ]
    assert lines == expected
    assert (root / "etc/ssh/ssh_host_ed25519_key").exists() is not cloud_init
