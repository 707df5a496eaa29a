"""Why a domain stopped: libvirt's (state, reason) in words, and the telling lines of QEMU's log."""

from __future__ import annotations

from pathlib import Path

import libvirt

from ruddervirt.hypervisor import qemu_log
from ruddervirt.hypervisor.libvirt_driver import fault_reason

EARLIER_RUN = """\
2026-12-07 10:00:00.000+0000: starting up libvirt version: 9.0.0, qemu version: 7.2.0
LC_ALL=C \\
/usr/bin/qemu-system-x86_64 \\
-name guest=rvt-b1-web,debug-threads=on \\
-accel kvm
block I/O error in device 'drive-virtio-disk0': No space left on device (28)
2026-12-07 10:05:00.000+0000: shutting down, reason=destroyed
"""
KVM_FAILURE_RUN = """\
2026-12-07 11:00:00.000+0000: starting up libvirt version: 9.0.0, qemu version: 7.2.0
LC_ALL=C \\
PATH=/usr/bin \\
/usr/bin/qemu-system-x86_64 \\
-name guest=rvt-b1-web,debug-threads=on \\
-machine pc-q35-7.2,usb=off,dump-guest-core=off \\
-msg timestamp=on
char device redirected to /dev/pts/3 (label charserial0)
KVM internal error. Suberror: 1
emulation failure
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000663
ES =0000 00000000 0000ffff 00009300
Code=00 00 00 00 <ff> ff 00 00
"""


def test_the_last_runs_kvm_internal_error_is_the_reason_without_command_line_or_registers(
    tmp_path: Path,
) -> None:
    log = tmp_path / "rvt-b1-web.log"
    log.write_text(EARLIER_RUN + KVM_FAILURE_RUN)
    assert qemu_log.reason(log) == "KVM internal error. Suberror: 1 / emulation failure"


def test_an_io_error_in_the_log_is_the_reason(tmp_path: Path) -> None:
    log = tmp_path / "rvt-b1-web.log"
    log.write_text(EARLIER_RUN)
    assert qemu_log.reason(log).startswith("block I/O error in device 'drive-virtio-disk0'")


def test_a_missing_or_quiet_log_gives_no_reason(tmp_path: Path) -> None:
    assert qemu_log.reason(tmp_path / "none.log") == ""
    quiet = tmp_path / "quiet.log"
    quiet.write_text("2026-12-07 11:00:00: starting up libvirt\nchar device redirected\n")
    assert qemu_log.reason(quiet) == ""


def test_system_domains_log_under_var_log_libvirt() -> None:
    assert qemu_log.log_dir("qemu:///system") == Path("/var/log/libvirt/qemu")


def test_libvirt_pauses_by_error_are_faults_and_pauses_on_purpose_are_not() -> None:
    paused = libvirt.VIR_DOMAIN_PAUSED
    assert fault_reason(paused, libvirt.VIR_DOMAIN_PAUSED_IOERROR) == "paused after an I/O error"
    assert fault_reason(paused, libvirt.VIR_DOMAIN_PAUSED_CRASHED) == "paused: the guest crashed"
    for on_purpose in (
        libvirt.VIR_DOMAIN_PAUSED_USER,
        libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
        libvirt.VIR_DOMAIN_PAUSED_SNAPSHOT,
    ):
        assert fault_reason(paused, on_purpose) is None
    assert fault_reason(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) is None
    off = libvirt.VIR_DOMAIN_SHUTOFF
    assert (
        fault_reason(off, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN) == "shut off: the guest powered off"
    )
    assert fault_reason(libvirt.VIR_DOMAIN_CRASHED, 0) == "crashed"
