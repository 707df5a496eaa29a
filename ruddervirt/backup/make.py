"""`manage.py backup DEST`: the database, the secret key and every version's files.

While the portal runs: the database is copied first, in one consistent snapshot; the files
taken are those of the versions *in that copy* (committed, so their folders are complete;
template disks and NVRAMs never change after capture). Nothing under `builds/` or `clones/`
of the storage root, where running builds and clones write, is ever read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.db import connection

from ruddervirt.backup import archive, database
from ruddervirt.backup.archive import BackupError, FileEntry, Manifest
from ruddervirt.hypervisor import disks

SECRET_FILE = "secret_key"  # noqa: S105 - a file name, not a secret
# The tables whose rows the manifest counts (shown by restore, compared by the tests).
COUNTED = {
    "modules": "modules_module",
    "versions": "builds_moduleversion",
    "classes": "clones_class",
    "clones": "clones_clone",
    "users": "auth_user",
}


def make_backup(dest: Path, *, echo: Callable[[str], None] = print) -> Manifest:
    """Write a backup to `dest` (a folder, or a .tar file); returns its manifest."""
    db = database.for_connection(connection.settings_dict)
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    with archive.staging(Path(dest)) as folder:
        db_file = folder / db.file
        db.snapshot(db_file)
        entries = [_entry(db_file, folder, kind="database")]
        echo(f"database: a consistent copy ({entries[0].size} bytes)")
        manifest = Manifest(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            storage_root=str(root),
            database={
                "engine": db.engine,
                "file": db.file,
                "migrations": [list(m) for m in database.migrations(db_file)],
            },
            versions=[],
            counts={name: database.count(db_file, table) for name, table in COUNTED.items()},
        )
        secret = _secret_key(folder)
        if secret is not None:
            entries.append(secret)
            manifest.secret_key = secret.path
        for row in database.versions(db_file):
            files = _version_files(row, root, folder, entries)
            manifest.versions.append(
                {"module": row.module, "number": row.number, "storage_path": row.storage_path,
                 "files": files}
            )  # fmt: skip
            echo(f"version {row.module}@{row.number}: {len(files)} file(s)")
        manifest.files = entries
        archive.write_manifest(folder, manifest)
    total = sum(e.size for e in entries)
    echo(f"backup written to {dest}: {len(entries)} files, {total} bytes, sha256 of each in "
         f"{archive.MANIFEST}")  # fmt: skip
    return manifest


def _entry(path: Path, folder: Path, *, kind: str, mode: int = archive.FILE_MODE) -> FileEntry:
    return FileEntry(
        path=path.relative_to(folder).as_posix(), sha256=archive.sha256_of(path),
        size=path.stat().st_size, kind=kind, mode=mode,
    )  # fmt: skip


def _secret_key(folder: Path) -> FileEntry | None:
    """The secret key file of var/ (sessions and signed links stay valid after a restore);
    none when DJANGO_SECRET_KEY comes from the environment (carry that yourself)."""
    if os.environ.get("DJANGO_SECRET_KEY"):
        return None
    source = Path(settings.VAR_DIR) / SECRET_FILE
    if not source.is_file():
        return None
    dest = folder / SECRET_FILE
    sha, size = archive.copy_hashing(source, dest)
    return FileEntry(path=SECRET_FILE, sha256=sha, size=size, kind="secret")


def _version_files(
    row: database.VersionRow, root: Path, folder: Path, entries: list[FileEntry]
) -> list[str]:
    """Copy the disks (with their chains) and NVRAMs of version `row` into the backup."""
    if row.spec is None:
        raise BackupError(f"{row.module}@{row.number} has no version record: cannot find its disks")
    names: list[str] = []
    for vm in row.spec["vms"]:
        for disk in vm["disks"]:
            if disk.get("path"):
                names += _copy_chain(root, PurePosixPath(disk["path"]), folder, entries)
        nvram = (vm.get("firmware") or {}).get("nvram")
        if nvram:
            names.append(_copy_plain(root, PurePosixPath(nvram["path"]), folder, entries))
    return names


def _copy_chain(
    root: Path, disk: PurePosixPath, folder: Path, entries: list[FileEntry]
) -> list[str]:
    """Copy `disk` and every image below it; a backing file outside the storage root goes
    under storage/external/. Each copy's backing reference is made relative."""
    chain = archive.chain_of(root / disk, root)
    names = [_backup_name(root, link.path) for link in chain]
    for index, link in enumerate(chain):
        name = names[index]
        if any(e.path == name for e in entries):
            continue  # shared by two disks (a common base): copied once
        target = folder / name
        archive.private_folder(target.parent)
        archive.copy_hashing(link.path, target)
        below = names[index + 1] if link.backing is not None else None
        if below is not None:
            disks.rebase_unsafe(
                target, archive.relative_backing(name, below),
                backing_format=link.backing_format,  # type: ignore[arg-type]
            )  # fmt: skip
        entries.append(
            FileEntry(
                path=name,
                sha256=archive.sha256_of(target),
                size=target.stat().st_size,
                kind="disk",
                mode=link.path.stat().st_mode & 0o777,
                format=link.format,
                backing=below,
                backing_format=link.backing_format,
            )
        )
    return names


def _copy_plain(root: Path, relative: PurePosixPath, folder: Path, entries: list[FileEntry]) -> str:
    source = root / relative
    if not source.is_file():
        raise BackupError(f"{source} (a version's NVRAM) is missing")
    name = _backup_name(root, source)
    target = folder / name
    archive.private_folder(target.parent)
    sha, size = archive.copy_hashing(source, target)
    entries.append(
        FileEntry(
            path=name, sha256=sha, size=size, kind="nvram", mode=source.stat().st_mode & 0o777
        )
    )
    return name


def _backup_name(root: Path, path: Path) -> str:
    try:
        relative = path.relative_to(root).as_posix()
    except ValueError:
        # A backing image outside the storage root: kept by a name of its own.
        relative = f"external/{archive.sha256_of(path)[:16]}-{path.name}"
    return f"{archive.STORAGE}/{relative}"
