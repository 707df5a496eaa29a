"""Does KVM actually run a guest here? Not only whether /dev/kvm exists.

Where nested KVM is broken (docs/operations.md, "KVM health"), /dev/kvm opens and libvirt
advertises ``kvm``, yet guests stop with QEMU's "KVM internal error ... emulation failure".
The probe boots the host's Debian kernel (``linux-image-cloud-amd64``, a declared package)
under ``qemu-system-x86_64 -accel kvm -cpu host`` (the CPU our kvm domains get) with no root
file system: a working KVM runs it through its boot until it panics ("VFS: Unable to mount
root fs"), and ``panic=-1`` with ``-no-reboot`` makes QEMU exit. A KVM that cannot run guests
fails on the way: QEMU's "KVM internal error", or no panic before the timeout.

Django-free; ``python -m ruddervirt.hypervisor.kvm_probe`` prints the verdict and exits 0
when KVM runs guests, 1 when it does not (scripts/run.sh picks TCG then).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ruddervirt import programs

KVM_DEVICE = Path("/dev/kvm")
QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT_S = 60.0
REAP_S = 10.0  # how long a killed QEMU is waited for
# What a guest kernel says when it ran all the way to looking for its root file system.
REACHED = ("Unable to mount root fs", "Kernel panic")
# What QEMU says when KVM could not run the guest (it then pauses the guest: it never exits).
KVM_FAILURES = ("KVM internal error", "emulation failure", "failed to initialize kvm")
ADVICE = "KVM is present but does not run guests here: use RUDDERVIRT_DOMAIN_TYPE=qemu"
NO_KVM = f"{KVM_DEVICE} is missing: KVM is not available here: use RUDDERVIRT_DOMAIN_TYPE=qemu"


@dataclass(frozen=True)
class KvmVerdict:
    """``works``: a guest ran under KVM. ``message``: one line for a person; ``detail``: what
    QEMU or the guest said (tails), when there is something to show."""

    works: bool
    message: str
    detail: str = ""
    seconds: float = 0.0


def probe_kernel(boot: Path = Path("/boot")) -> Path | None:
    """The kernel to boot: the newest cloud kernel, else the newest kernel, in ``boot``."""
    for pattern in ("vmlinuz-*-cloud-amd64", "vmlinuz-*"):
        found = sorted(boot.glob(pattern))
        if found:
            return found[-1]
    return None


def probe_argv(kernel: Path, serial_log: Path, qemu: str = QEMU) -> list[str]:
    """The probe's QEMU command line: no disk, no network, no display, 128 MiB."""
    return [
        qemu, "-accel", "kvm", "-cpu", "host", "-machine", "pc", "-m", "128", "-smp", "1",
        "-nodefaults", "-display", "none", "-no-reboot", "-no-user-config",
        "-serial", f"file:{serial_log}", "-kernel", str(kernel),
        "-append", "console=ttyS0 panic=-1 loglevel=3",
    ]  # fmt: skip


def probe_kvm(
    *,
    timeout: float = PROBE_TIMEOUT_S,
    device: Path = KVM_DEVICE,
    kernel: Path | None = None,
    qemu: str = QEMU,
) -> KvmVerdict:
    """Boot a guest kernel under KVM (see the module) and say whether it ran; never raises
    for a failed probe, and returns within about ``timeout`` s."""
    if not device.exists():
        return KvmVerdict(False, NO_KVM)
    kernel = kernel or probe_kernel()
    if kernel is None:
        return KvmVerdict(False, f"cannot probe KVM: no kernel in /boot to boot ({ADVICE})")
    with tempfile.TemporaryDirectory(prefix="rudder-kvm-probe-") as folder:
        serial = Path(folder) / "serial.log"
        errors = Path(folder) / "qemu.log"
        argv = probe_argv(kernel, serial, qemu)
        started = time.monotonic()
        outcome = _watch(argv, serial, errors, started + timeout)
        took = time.monotonic() - started
        said, guest = _read(errors), _read(serial)
    return _verdict(outcome, said, guest, took, timeout)


def _watch(argv: Sequence[str], serial: Path, errors: Path, deadline: float) -> str:
    """Run the probe until QEMU exits ("exited"), says KVM failed ("failed") or the deadline
    passes ("timeout"); QEMU is killed in the last two cases."""
    programs.check(argv)
    with errors.open("wb") as err:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        except OSError as exc:
            err.write(f"cannot run {argv[0]}: {exc}\n".encode())
            return "failed"
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return "exited"
                if any(word in _read(errors) for word in KVM_FAILURES):
                    return "failed"
                time.sleep(0.1)
            return "timeout"
        finally:
            if proc.poll() is None:
                proc.kill()
            _reap(proc, err)


def _reap(proc: subprocess.Popen, err: IO[bytes]) -> None:
    """Wait up to ``REAP_S`` for the killed QEMU; one that is still there (stuck in the
    kernel) is said in its error log, not raised."""
    try:
        proc.wait(timeout=REAP_S)
    except subprocess.TimeoutExpired:
        err.write(f"QEMU (pid {proc.pid}) did not exit within {REAP_S:g}s of SIGKILL\n".encode())


def _verdict(outcome: str, said: str, guest: str, took: float, timeout: float) -> KvmVerdict:
    ran = any(word in guest for word in REACHED)
    if outcome == "exited" and ran:
        return KvmVerdict(True, f"KVM runs guests (a kernel booted in {took:.1f}s)", "", took)
    detail = _tail(said) or _tail(guest)
    if outcome == "timeout":
        reason = f"the probe guest did not finish booting within {timeout:.0f}s"
    elif any(word in said for word in KVM_FAILURES):
        reason = f"QEMU: {_first_failure(said)}"
    else:
        said_last = _last_line(said)
        reason = "the probe guest stopped before its kernel finished booting"
        reason += f" (QEMU: {said_last})" if said_last else ""
    return KvmVerdict(False, f"{ADVICE} ({reason})", detail, took)


def _first_failure(said: str) -> str:
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    hits = [i for i, line in enumerate(lines) if any(w in line for w in KVM_FAILURES)]
    return " / ".join(lines[hits[0] : hits[0] + 2]) if hits else ""


def _last_line(said: str) -> str:
    """QEMU's last error line, without its program-name prefix and the shell's abort note."""
    lines = [line.strip() for line in said.splitlines() if "error" in line.lower()]
    return lines[-1].removeprefix(f"{QEMU}: ") if lines else ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def main(argv: Sequence[str] | None = None) -> int:
    """Print the verdict; exit 0 when KVM runs guests, 1 when it does not."""
    verdict = probe_kvm(timeout=float(os.environ.get("RUDDERVIRT_KVM_PROBE_TIMEOUT", "60")))
    print(verdict.message)
    return 0 if verdict.works else 1


if __name__ == "__main__":
    sys.exit(main())
