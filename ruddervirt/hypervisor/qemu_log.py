"""What QEMU's own log says about why a domain stopped.

libvirt appends every start of a domain to one file (``/var/log/libvirt/qemu/NAME.log`` for
``qemu:///system``): a "starting up" line, QEMU's command line, then whatever QEMU prints,
e.g. on broken nested KVM::

    KVM internal error. Suberror: 1
    emulation failure
    RAX=0000000000000000 RBX=... (a register dump)

:func:`reason` keeps the lines of the last start that say what went wrong, without the
command line and the register dump. Django-free; reads at most the last ``MAX_BYTES``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MAX_BYTES = 64 * 1024
SYSTEM_LOG_DIR = Path("/var/log/libvirt/qemu")
# Lines that say what went wrong (QEMU's, and libvirt's own notes in the same file).
_TELLING = re.compile(
    r"KVM internal error|emulation failure|error|failed|fail|terminating on signal|"
    r"shutting down, reason=|panic",
    re.IGNORECASE,
)
# A register dump ("RAX=...", "ES =0000 ...", "Code=...") or a line of QEMU's command line
# (libvirt writes one argument a line, each but the last ending in a backslash).
_NOISE = re.compile(r"^\s*[A-Z][A-Za-z0-9_]*\s*=|\\$|^\s*-[a-z]")
_START = "starting up"


def log_dir(uri: str) -> Path:
    """Where libvirt keeps the QEMU logs of ``uri``'s domains."""
    if uri.startswith("qemu:///session"):
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cache / "libvirt" / "qemu" / "log"
    return SYSTEM_LOG_DIR


def last_run(path: Path) -> list[str]:
    """The lines of the domain's last start (empty when the log cannot be read)."""
    try:
        with path.open("rb") as log:
            log.seek(max(log.seek(0, os.SEEK_END) - MAX_BYTES, 0))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _START in line]
    return lines[starts[-1] + 1 :] if starts else lines


def reason(path: Path, *, limit: int = 3) -> str:
    """The first ``limit`` telling lines of the last start, joined with " / " ("" if none)."""
    telling = [
        line.strip()
        for line in last_run(path)
        if line.strip() and not _NOISE.search(line) and _TELLING.search(line)
    ]
    return " / ".join(telling[:limit])
