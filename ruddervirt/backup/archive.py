"""A backup on disk: its manifest, its files with their checksums, qcow2 chains, tar.

Django-free. Contracts:

* a backup is written under `DEST.partial` and renamed to DEST once complete; DEST or a
  leftover `DEST.partial` is never overwritten. Folders are 0700 and files 0600 from their
  creation (the database holds password hashes);
* every file the manifest lists has its size and sha256 there; `verify` reads them all back,
  and checks that every qcow2's backing file is one of the backup's files, before a restore
  writes anything;
* inside a backup, a qcow2's backing file is recorded relative to its own folder, so the
  backup is a consistent tree wherever it is unpacked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ruddervirt.hypervisor import disks
from ruddervirt.proc import ExternalCommandError

FORMAT = "ruddervirt-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORAGE = "storage"  # the backup's copy of (part of) the storage root
DIR_MODE = 0o700
FILE_MODE = 0o600
CHUNK = 1 << 20
# Folders of the storage root where running builds and clones write: never copied.
BUSY_FOLDERS = ("builds", "clones")
# What a backup leaves out, said in its manifest (and in docs/operations.md).
NOT_INCLUDED = (
    "clone overlays (storage/clones): clones are marked failed on restore; reprovision them",
    "build folders (storage/builds): a build running during the backup is not in it",
    "the step cache and the image, ISO and file caches (storage/cache): rebuilt on demand",
    "Redis (queues only: restore settles what was queued or running)",
)


class BackupError(Exception):
    """A backup cannot be made, or a backup is refused (corrupt, incomplete, ...)."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a backup: `path` is relative to the backup's folder (POSIX)."""

    path: str
    sha256: str
    size: int
    kind: str  # "database", "secret", "disk", "nvram"
    mode: int = FILE_MODE  # the original file's permission bits (restored, never wider)
    format: str | None = None  # "qcow2" for disks
    backing: str | None = None  # another entry's path: this disk's backing file
    backing_format: str | None = None


@dataclass
class Manifest:
    created_at: str
    storage_root: str  # where the original's storage root was
    database: dict[str, Any]  # {"engine": "sqlite", "file": ..., "migrations": [[app, name]]}
    versions: list[dict[str, Any]]  # {"module", "number", "storage_path", "files": [...]}
    files: list[FileEntry] = field(default_factory=list)
    secret_key: str | None = None  # the entry holding the Django secret key, if kept in var/
    counts: dict[str, int] = field(default_factory=dict)
    not_included: list[str] = field(default_factory=lambda: list(NOT_INCLUDED))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, where: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BackupError(f"{where}: not a RudderVirt backup manifest")
        if data.get("format_version") != FORMAT_VERSION:
            raise BackupError(
                f"{where}: backup format {data.get('format_version')!r}; this RudderVirt reads "
                f"format {FORMAT_VERSION}"
            )
        try:
            files = [FileEntry(**entry) for entry in data["files"]]
            return cls(
                created_at=data["created_at"], storage_root=data["storage_root"],
                database=data["database"], versions=data["versions"], files=files,
                secret_key=data.get("secret_key"), counts=data.get("counts", {}),
                not_included=data.get("not_included", []),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise BackupError(f"{where}: the manifest is incomplete or malformed: {exc}") from exc

    def entry(self, path: str) -> FileEntry | None:
        return next((f for f in self.files if f.path == path), None)


# --- writing ------------------------------------------------------------------------------
@contextlib.contextmanager
def staging(dest: Path) -> Iterator[Path]:
    """A private folder to write the backup in, `DEST.partial` (for a .tar DEST:
    `DEST.partial.d`); renamed (or tarred) to DEST when the block ends without error,
    removed when it fails. Refuses an existing DEST or a leftover partial."""
    dest = Path(dest)
    is_tar = dest.name.endswith(".tar")
    folder = dest.with_name(dest.name + (".partial.d" if is_tar else ".partial"))
    tar_partial = dest.with_name(dest.name + ".partial")
    for path in (dest, folder, tar_partial):
        if path.exists() or path.is_symlink():
            what = "exists" if path == dest else "is left from an interrupted backup: remove it"
            raise BackupError(f"{path} {what}; refusing to overwrite")
    if not dest.parent.is_dir():
        raise BackupError(f"{dest.parent} is not a folder")
    folder.mkdir(mode=DIR_MODE)
    folder.chmod(DIR_MODE)
    try:
        yield folder
        if is_tar:
            write_tar(folder, tar_partial)
            os.rename(tar_partial, dest)
            shutil.rmtree(folder)
        else:
            os.rename(folder, dest)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        tar_partial.unlink(missing_ok=True)
        raise


def write_tar(folder: Path, dest: Path) -> None:
    """An uncompressed tar of `folder`'s contents (disks are compacted qcow2 already)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
        raw.flush()
        os.fsync(raw.fileno())


def private_folder(path: Path) -> Path:
    """`path` and any missing parents, each made 0700."""
    if not path.is_dir():
        private_folder(path.parent)
        path.mkdir(mode=DIR_MODE)
        path.chmod(DIR_MODE)
    return path


def copy_hashing(src: Path, dest: Path, *, mode: int = FILE_MODE) -> tuple[str, int]:
    """Copy `src` to a new file `dest` (created with `mode`, never overwriting); returns the
    sha256 and size of what was written."""
    digest, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with open(src, "rb") as source, os.fdopen(fd, "wb") as target:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            target.write(chunk)
            size += len(chunk)
        target.flush()
        os.fsync(target.fileno())
    os.chmod(dest, mode)  # the umask may have narrowed it
    return digest.hexdigest(), size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> None:
    text = json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n"
    fd = os.open(folder / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())


# --- qcow2 chains --------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainLink:
    """One image of a template disk's chain: `path` absolute, its backing (absolute) or None."""

    path: Path
    format: str
    backing: Path | None
    backing_format: str | None


def chain_of(disk: Path, root: Path) -> list[ChainLink]:
    """`disk` and every image below it, top first. Refuses a missing image, a backing file
    recorded without its format, and any image in a folder where builds or clones write."""
    links: list[ChainLink] = []
    path, fmt = Path(disk), "qcow2"
    seen: set[Path] = set()
    while True:
        if path in seen:
            raise BackupError(f"{disk}: its backing chain loops at {path}")
        seen.add(path)
        if not path.is_file():
            below = f" (the backing file of {links[-1].path})" if links else ""
            raise BackupError(f"template disk {disk}: {path}{below} is missing")
        _refuse_busy(path, root, disk)
        backing = None
        if fmt == "qcow2":
            try:
                backing = disks.backing_of(path, fmt="qcow2")
            except (disks.DiskError, ExternalCommandError) as exc:
                raise BackupError(f"template disk {disk}: {exc}") from exc
        if backing is None:
            links.append(ChainLink(path, fmt, None, None))
            return links
        below_path = Path(os.path.normpath(path.parent / backing[0]))
        links.append(ChainLink(path, fmt, below_path, backing[1]))
        path, fmt = below_path, backing[1]


def _refuse_busy(path: Path, root: Path, disk: Path) -> None:
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        return
    if relative.parts and relative.parts[0] in BUSY_FOLDERS:
        raise BackupError(
            f"template disk {disk}: {path} is in {relative.parts[0]}/, where running "
            f"{relative.parts[0]} write; refusing to copy it"
        )


def relative_backing(entry_path: str, backing_path: str) -> str:
    """`backing_path` (a backup entry) as seen from the folder of `entry_path`."""
    start = PurePosixPath(entry_path).parent
    return os.path.relpath(backing_path, start.as_posix() or ".")


# --- reading ------------------------------------------------------------------------------
@contextlib.contextmanager
def opened(src: Path, scratch: Path) -> Iterator[Path]:
    """The backup folder of `src`: itself, or for a .tar a private folder under `scratch`
    it is unpacked into (only plain files and folders, none outside it), removed afterwards."""
    src = Path(src)
    if src.is_dir():
        yield src
        return
    if not src.is_file() or not tarfile.is_tarfile(src):
        raise BackupError(f"{src} is neither a backup folder nor a tar of one")
    private_folder(scratch)
    try:
        with tarfile.open(src, mode="r") as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise BackupError(f"{src}: {member.name} is not a plain file or folder")
            tar.extractall(scratch, filter="data")
        yield scratch
    except tarfile.TarError as exc:
        raise BackupError(f"{src}: cannot unpack it: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_manifest(folder: Path) -> Manifest:
    where = folder / MANIFEST
    try:
        data = json.loads(where.read_text())
    except FileNotFoundError as exc:
        raise BackupError(f"{folder}: no {MANIFEST}: not a RudderVirt backup") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"{where}: cannot be read: {exc}") from exc
    return Manifest.from_json(data, where)


def verify(folder: Path, manifest: Manifest) -> None:
    """Check every file of `manifest` in `folder`: there, its size and sha256, every
    backing file one of the backup's files and the one its qcow2 records."""
    names = {entry.path for entry in manifest.files}
    for entry in manifest.files:
        path = _inside(folder, entry.path)
        if not path.is_file() or path.is_symlink():
            raise BackupError(f"the backup is incomplete: {entry.path} is missing")
        found = sha256_of(path)
        if found != entry.sha256 or path.stat().st_size != entry.size:
            raise BackupError(
                f"the backup is corrupt: {entry.path} has sha256 {found}, the manifest says "
                f"{entry.sha256}"
            )
        if entry.format == "qcow2":
            _check_backing(folder, entry, names)
    for role, name in (
        ("database", manifest.database.get("file")),
        ("secret", manifest.secret_key),
    ):
        if name is not None and name not in names:
            raise BackupError(f"the backup is incomplete: its {role} file {name} is not listed")


def _check_backing(folder: Path, entry: FileEntry, names: set[str]) -> None:
    path = folder / entry.path
    try:
        recorded = disks.backing_of(path, fmt="qcow2")
    except (disks.DiskError, ExternalCommandError, ValueError) as exc:
        raise BackupError(
            f"the backup is corrupt: {entry.path} is not a readable qcow2: {exc}"
        ) from exc
    if entry.backing is None:
        if recorded is not None:
            raise BackupError(f"{entry.path} has a backing file the manifest does not list")
        return
    if entry.backing not in names:
        raise BackupError(
            f"the backup is incomplete: the backing file {entry.backing} of {entry.path} "
            f"is not in it"
        )
    expected = relative_backing(entry.path, entry.backing)
    if recorded is None or recorded[0] != expected:
        raise BackupError(
            f"the backup is corrupt: {entry.path} records backing file "
            f"{recorded[0] if recorded else None!r}, the manifest {expected!r}"
        )


def _inside(folder: Path, name: str) -> Path:
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise BackupError(f"the manifest names {name!r}, a path outside the backup")
    return folder / relative
