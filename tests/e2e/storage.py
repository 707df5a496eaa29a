"""Folders for disks that QEMU must reach during the end-to-end tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def qemu_reachable_folder(label: str) -> Path:
    """A new, empty folder under var/test-storage that QEMU (user libvirt-qemu) can reach.
    Not under pytest's temporary folder: pytest makes /tmp/pytest-of-<user> private (0700)
    at the start of every session, so a second session running at the same time would cut
    QEMU off from disks kept there."""
    root = ROOT / "var" / "test-storage" / f"{os.getpid()}-{label}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for folder in (root, *root.parents):
        if folder == ROOT.parent:
            break
        # var/ holds secrets: traversable (0711), never listable (docs/security.md).
        folder.chmod(folder.stat().st_mode | (0o011 if folder == ROOT / "var" else 0o055))
    return root
