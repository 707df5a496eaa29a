"""The KVM probe (ruddervirt/hypervisor/kvm_probe.py) against a stand-in QEMU that behaves as a
working KVM, a broken one (QEMU's "KVM internal error" and a paused guest) or a hung one."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from ruddervirt.hypervisor import kvm_probe

STAND_IN = """\
#!{python}
import sys, time
serial = next(a for a in sys.argv if a.startswith("file:"))[5:]
mode = {mode!r}
if mode == "works":
    open(serial, "w").write("Kernel panic - not syncing: VFS: Unable to mount root fs\\n")
    sys.exit(0)
if mode == "broken":
    sys.stderr.write("KVM internal error. Suberror: 1\\nemulation failure\\nRAX=0\\n")
    sys.stderr.flush()
if mode == "stops":
    sys.stderr.write("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\\n")
    sys.exit(134)
time.sleep(60)  # a paused guest: QEMU never exits by itself
"""


def stand_in(tmp_path: Path, mode: str) -> str:
    qemu = tmp_path / mode / "qemu-system-x86_64"  # a declared program's name
    qemu.parent.mkdir()
    qemu.write_text(STAND_IN.format(python=sys.executable, mode=mode))
    qemu.chmod(0o755)
    return str(qemu)


@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinuz-6.1.0-57-cloud-amd64"
    path.write_bytes(b"not really a kernel")
    return path


def probe(tmp_path, kernel, mode, timeout=20.0):
    return kvm_probe.probe_kvm(
        timeout=timeout, device=kernel, kernel=kernel, qemu=stand_in(tmp_path, mode)
    )


def test_a_guest_that_boots_to_its_kernel_panic_means_kvm_works(tmp_path, kernel):
    verdict = probe(tmp_path, kernel, "works")
    assert verdict.works
    assert verdict.message.startswith("KVM runs guests")


def test_qemus_kvm_internal_error_is_reported_at_once_with_the_advice(tmp_path, kernel):
    started = time.monotonic()
    verdict = probe(tmp_path, kernel, "broken")
    assert time.monotonic() - started < 10  # not the whole timeout
    assert not verdict.works
    assert verdict.message.startswith(kvm_probe.ADVICE)
    assert "KVM internal error. Suberror: 1 / emulation failure" in verdict.message
    assert "emulation failure" in verdict.detail


def test_a_probe_guest_that_never_finishes_is_a_failure_after_the_timeout(tmp_path, kernel):
    verdict = probe(tmp_path, kernel, "hangs", timeout=1.0)
    assert not verdict.works
    assert "did not finish booting within 1s" in verdict.message


def test_qemu_exiting_before_the_guest_kernel_ran_is_a_failure(tmp_path, kernel):
    verdict = probe(tmp_path, kernel, "stops")
    assert not verdict.works
    assert "stopped before its kernel finished booting" in verdict.message
    assert "(QEMU: error: failed to set MSR 0x10a to 0x69)" in verdict.message


def test_without_dev_kvm_the_probe_says_so_without_running_qemu(tmp_path):
    verdict = kvm_probe.probe_kvm(device=tmp_path / "no-kvm", qemu="/nonexistent/qemu")
    assert not verdict.works
    assert "RUDDERVIRT_DOMAIN_TYPE=qemu" in verdict.message


def test_the_probe_prefers_the_cloud_kernel(tmp_path):
    for name in ("vmlinuz-6.1.0-57-amd64", "vmlinuz-6.1.0-57-cloud-amd64"):
        (tmp_path / name).write_bytes(b"")
    assert kvm_probe.probe_kernel(tmp_path).name == "vmlinuz-6.1.0-57-cloud-amd64"
    assert kvm_probe.probe_kernel(tmp_path / "none") is None


def test_the_probe_boots_with_kvm_and_the_host_cpu_and_no_disk(tmp_path):
    argv = kvm_probe.probe_argv(Path("/boot/vmlinuz"), tmp_path / "serial.log")
    assert argv[:5] == ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host"]
    assert "-no-reboot" in argv and "-drive" not in argv and "-netdev" not in argv
    assert "panic=-1" in argv[-1]


def test_a_qemu_that_outlives_sigkill_is_a_failed_probe_not_an_exception(
    tmp_path, kernel, monkeypatch
):
    real_popen = kvm_probe.subprocess.Popen

    class Unreapable(real_popen):  # type: ignore[misc,valid-type]
        def wait(self, timeout=None):
            raise kvm_probe.subprocess.TimeoutExpired(self.args, timeout)

    monkeypatch.setattr(kvm_probe.subprocess, "Popen", Unreapable)
    monkeypatch.setattr(kvm_probe, "REAP_S", 0.1)
    verdict = probe(tmp_path, kernel, "hangs", timeout=1.0)
    assert not verdict.works
    assert "did not finish booting within 1s" in verdict.message
    assert "did not exit within 0.1s of SIGKILL" in verdict.detail
