"""Watching a build VM from outside: its serial console file and its QEMU process.

The tiny guest's console is ttyS0, written to a file under both tools (RudderVirt's domains
always do; the Packer template adds ``-serial file:...``). When the kernel prints
``reboot: Power down`` the guest's own shutdown is over. Then QEMU exits (its process turns
into a zombie until its parent reaps it) and finally the tool notices the VM is off.

A thread polls every 20 ms and stamps with ``time.monotonic()`` the first appearance of:

    going_down   the console says "The system is going down"
    power_down   the console says "reboot: Power down"
    qemu_exit    the QEMU process is a zombie, or gone
    qemu_reaped  the QEMU process is gone (reaped by its parent)

QEMU's process is the one whose command line contains a given string (the console path
for Packer's QEMU; libvirt passes files as descriptors, so for RudderVirt the domain name
prefix, ``guest=<prefix>``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

POLL_S = 0.02
FIND_PID_EVERY = 10  # polls: scanning /proc is the expensive part
MARKERS = {"going_down": b"The system is going down", "power_down": b"reboot: Power down"}


def _pid_with_argument(needle: bytes) -> int | None:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                if needle in handle.read():
                    return int(entry.name)
        except OSError:
            continue
    return None


def _process_state(pid: int) -> str | None:
    """The state letter of ``pid`` (R, S, Z, ...), None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class GuestWatch(threading.Thread):
    """Follows the first console file ``find()`` returns (asked until one exists) and the
    first process whose command line contains ``pid_needle``."""

    def __init__(self, find: Callable[[], Iterable[Path]], pid_needle: bytes) -> None:
        super().__init__(name="guest-watch", daemon=True)
        self._find = find
        self._needle = pid_needle
        self._done = threading.Event()
        self.seen: dict[str, float] = {}
        self.content = bytearray()  # the console output, for --trace

    def run(self) -> None:
        path: Path | None = None
        pid: int | None = None
        offset, tail, polls = 0, b"", 0
        while not self._done.wait(POLL_S):
            polls += 1
            if path is None:
                path = next(iter(self._find()), None)
                continue
            if pid is None and polls % FIND_PID_EVERY == 0:
                pid = _pid_with_argument(self._needle)
            data = self._read(path, offset)
            offset += len(data)
            self.content += data
            window, tail = tail + data, (tail + data)[-64:]
            now = time.monotonic()
            for key, needle in MARKERS.items():
                if key not in self.seen and needle in window:
                    self.seen[key] = now
            if pid is not None:
                self._check_process(pid, now)

    @staticmethod
    def _read(path: Path, offset: int) -> bytes:
        try:
            with path.open("rb") as handle:
                handle.seek(offset)
                return handle.read()
        except OSError:
            return b""

    def _check_process(self, pid: int, now: float) -> None:
        state = _process_state(pid)
        if state in (None, "Z", "X"):
            self.seen.setdefault("qemu_exit", now)
        if state is None:
            self.seen.setdefault("qemu_reaped", now)

    def stop(self) -> None:
        """Stop watching; ``seen`` and ``content`` then hold what was found."""
        self._done.set()
        self.join(timeout=2)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace").replace("\r", "")


def newer_files(root: Path, pattern: str, since_wall: float) -> Callable[[], list[Path]]:
    """A ``find`` for GuestWatch: files under ``root`` matching ``pattern``, modified after
    ``since_wall`` (so a previous build's console is never taken for this one's)."""

    def find() -> list[Path]:
        found = []
        for path in root.glob(pattern):
            try:
                if path.stat().st_mtime >= since_wall - 1:
                    found.append(path)
            except OSError:
                continue
        return found

    return find
