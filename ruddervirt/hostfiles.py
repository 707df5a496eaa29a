"""Files that hold secrets on the host (``var/``): private from the first byte.

A file created and then ``chmod``-ed is readable by everyone in between; these functions
create files with mode 0600 in the ``open`` call itself, and publish whole contents at once
(written under a temporary name, then linked or renamed into place), so no reader ever sees a
partial secret and no process ever sees another mode.

Contract: :func:`private_dir` makes a folder only its owner can list; :func:`create_once`
writes a secret unless one exists and returns the one that counts (two processes racing agree);
:func:`write_private` replaces a file's content; :func:`touch_private` creates an empty private
file (the SQLite database, before Django's first connection creates it with the umask).
Django-free: settings.py uses it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

FILE_MODE = 0o600
# Traversable, not listable: QEMU (user libvirt-qemu) must reach var/storage and the test
# image cache below it; everything secret in it is 0600 itself.
DIR_MODE = 0o711


def private_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create ``path`` (and parents) if needed, and take group/other read and write away."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    current = path.stat().st_mode & 0o777
    if current & ~mode:
        path.chmod(current & mode)
    return path


@contextlib.contextmanager
def _temporary(folder: Path, text: str) -> Iterator[Path]:
    """A private file in ``folder`` holding ``text``, removed when the block ends."""
    temp = folder / f".{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def create_once(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` (mode 0600) unless ``path`` exists; return its content.

    Atomic: the file appears complete or not at all, and when two processes race, both get
    the content of the one that came first."""
    private_dir(path.parent)
    with _temporary(path.parent, text) as temp, contextlib.suppress(FileExistsError):
        os.link(temp, path)  # fails when the file exists: the first writer wins
    tighten(path)
    return path.read_text()


def write_private(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically; the file is 0600 throughout."""
    private_dir(path.parent)
    with _temporary(path.parent, text) as temp:
        os.replace(temp, path)


def touch_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist; tighten it if it does."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    except FileExistsError:
        tighten(path)


def django_secret_key(path: Path) -> str:
    """The key in ``path``, made (50 random URL-safe characters, 0600) when there is none."""
    return create_once(path, secrets.token_urlsafe(50)).strip()


def tighten(path: Path) -> None:
    """Take every group and other permission away from an existing file of ours."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(mode & 0o700)
