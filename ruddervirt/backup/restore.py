"""`manage.py restore SRC`: a backup onto this host, whose storage root may be elsewhere.

In order; each step runs only when every one before it passed, and nothing is written
before step 4:

1. the target database must be empty (no users, modules, builds, classes, ...) unless
   `force`; no file of the backup may exist in the storage root unless `force`;
2. every file's sha256 and every qcow2 backing reference is checked (archive.verify), and
   every disk and NVRAM of every version in the backup's database must be in the backup;
3. the backup's migrations must all be known here (a newer RudderVirt's backup is refused);
4. the files go under RUDDERVIRT_STORAGE_ROOT (each written as .partial, checked, renamed),
   and each disk's backing reference is rewritten to its new place (`qemu-img rebase -u`);
5. the database is loaded and migrated forward; version folders are rewritten to the new
   storage root; the halted template domains are defined again in libvirt (under this
   host's name prefix); clones (whose disks a backup never holds) are marked failed, to be
   reprovisioned; builds and runs that were in flight are settled as interrupted;
6. the secret key is put in var/ (unless DJANGO_SECRET_KEY is set).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from django.apps import apps
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

from builds.models import ACTIVE, Build, BuildStatus, ModuleVersion, TemplateVM
from builds.transitions import transition as build_transition
from clones.models import Clone, CloneStatus, CloneVM
from clones.transitions import transition as clone_transition
from jobs.models import OPEN, Operation, OperationStatus
from modules.lifecycle import InvalidTransition
from ruddervirt import hostfiles
from ruddervirt.backup import archive, database
from ruddervirt.backup.archive import BackupError, FileEntry, Manifest
from ruddervirt.engine.templates import define_templates, version_key
from ruddervirt.hypervisor import disks
from ruddervirt.runtime import engine_config, get_hypervisor
from ruddervirt.spec import SpecError

# The apps whose rows make a database "not empty" (auth: its users; groups and permissions
# are made by the migrations themselves).
DATA_APPS = ("accounts", "modules", "jobs", "builds", "clones", "consoles")
CLONE_GONE = (
    "restored from a backup: this clone's disks were not in it (backups keep templates, "
    "not clones); reprovision it"
)
RUN_GONE = "interrupted: restored from a backup taken while it ran"


@dataclass(frozen=True)
class Restored:
    manifest: Manifest
    versions: int
    templates: list[str]
    clones_marked: int


def restore_backup(
    src: Path, *, force: bool = False, echo: Callable[[str], None] = print
) -> Restored:
    root = Path(settings.RUDDERVIRT_STORAGE_ROOT)
    target_db = database.for_connection(connection.settings_dict)
    refuse_non_empty(force)
    # A tar is unpacked beside where its files go (same file system: no second copy
    # elsewhere); the storage root itself keeps the mode setup gave it (QEMU traverses it).
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / f".restore-{os.getpid()}"
    with archive.opened(Path(src), scratch) as folder:
        manifest = archive.load_manifest(folder)
        if manifest.database.get("engine") != target_db.engine:
            raise BackupError(
                f"the backup holds a {manifest.database.get('engine')} database; this portal "
                f"uses {target_db.engine}"
            )
        archive.verify(folder, manifest)
        echo(f"checked the sha256 of all {len(manifest.files)} files of the backup")
        db_file = folder / manifest.database["file"]
        check_versions_complete(db_file, manifest)
        check_migrations(manifest)
        storage = [e for e in manifest.files if e.path.startswith(f"{archive.STORAGE}/")]
        if not force:
            refuse_existing_files(root, storage)
        place_files(folder, root, storage)
        echo(f"{len(storage)} template file(s) put under {root}")
        connections.close_all()
        target_db.load(db_file)
        call_command("migrate", interactive=False, verbosity=0)
        echo("database restored and migrated")
        secret = _restore_secret(folder, manifest)
    if secret:
        echo(secret)
    versions = rewrite_versions(root, manifest)
    templates = redefine_templates(echo)
    marked = settle_clones()
    settle_runs()
    echo(f"{marked} clone(s) marked failed: their disks are not in a backup; reprovision them")
    return Restored(manifest, versions, templates, marked)


# --- 1. to 3.: checks ----------------------------------------------------------------------
def refuse_non_empty(force: bool) -> None:
    """BackupError when the target database holds data (and not `force`)."""
    tables = set(connection.introspection.table_names())
    found = []
    for model in apps.get_models():
        label = model._meta.label
        if model._meta.app_label not in DATA_APPS and label != settings.AUTH_USER_MODEL:
            continue
        if model._meta.db_table in tables and model._default_manager.exists():
            found.append(label)
    if found and not force:
        raise BackupError(
            f"the target database is not empty ({', '.join(sorted(found))} have rows): "
            f"restore onto a fresh database, or pass --force to replace it"
        )


def check_versions_complete(db_file: Path, manifest: Manifest) -> None:
    """Every disk and NVRAM of every version in the backup's database is a file of it."""
    names = {e.path for e in manifest.files}
    for row in database.versions(db_file):
        for vm in (row.spec or {}).get("vms", []):
            paths = [d["path"] for d in vm["disks"] if d.get("path")]
            nvram = (vm.get("firmware") or {}).get("nvram")
            paths += [nvram["path"]] if nvram else []
            for path in paths:
                if f"{archive.STORAGE}/{path}" not in names:
                    raise BackupError(
                        f"the backup is incomplete: {row.module}@{row.number} VM {vm['name']} "
                        f"needs {archive.STORAGE}/{path}, which is not in it"
                    )


def check_migrations(manifest: Manifest) -> None:
    known = set(MigrationLoader(None, ignore_no_migrations=True).disk_migrations)
    applied = {(app, name) for app, name in manifest.database.get("migrations", [])}
    unknown = sorted(m for m in applied - known if m[0] in {app for app, _ in known})
    if unknown:
        app, name = unknown[0]
        raise BackupError(
            f"the backup comes from a newer RudderVirt: its migration {app}.{name} is not "
            f"known here ({len(unknown)} unknown); upgrade RudderVirt first"
        )


def refuse_existing_files(root: Path, storage: list[FileEntry]) -> None:
    for entry in storage:
        target = _target(root, entry)
        if target.exists():
            raise BackupError(f"{target} exists already; refusing to overwrite it (--force)")


# --- 4.: files -----------------------------------------------------------------------------
def _target(root: Path, entry: FileEntry) -> Path:
    return root / PurePosixPath(entry.path).relative_to(archive.STORAGE)


def place_files(folder: Path, root: Path, storage: list[FileEntry]) -> None:
    """Copy each file under `root` (checked again as it is written), then point each disk
    at its backing file's new place."""
    for entry in storage:
        target = _target(root, entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.unlink(missing_ok=True)
        # Never wider than the original, never writable by others (libvirt-qemu reads it).
        sha, _size = archive.copy_hashing(folder / entry.path, partial, mode=entry.mode & 0o755)
        if sha != entry.sha256:
            partial.unlink()
            raise BackupError(f"{entry.path} changed while it was copied (sha256 {sha})")
        os.replace(partial, target)
    for entry in storage:
        if entry.backing is not None:
            below = _target(root, next(e for e in storage if e.path == entry.backing))
            disks.rebase_unsafe(
                _target(root, entry), str(below),
                backing_format=entry.backing_format,  # type: ignore[arg-type]
            )  # fmt: skip


def _restore_secret(folder: Path, manifest: Manifest) -> str | None:
    if manifest.secret_key is None:
        return "the backup holds no secret key (DJANGO_SECRET_KEY came from the environment)"
    if os.environ.get("DJANGO_SECRET_KEY"):
        return "kept DJANGO_SECRET_KEY from the environment (the backup's key is not used)"
    key = (folder / manifest.secret_key).read_text()
    hostfiles.write_private(Path(settings.VAR_DIR) / "secret_key", key)
    return "secret key restored to var/secret_key (sessions stay valid)"


# --- 5.: rows ------------------------------------------------------------------------------
def rewrite_versions(root: Path, manifest: Manifest) -> int:
    """Point each version's folder at the new storage root."""
    old_root = Path(manifest.storage_root)
    count = 0
    for version in ModuleVersion.objects.select_related("module"):
        try:
            relative = Path(version.storage_path).relative_to(old_root)
        except ValueError:
            relative = Path("modules") / version.module.name / f"v{version.number}"
        ModuleVersion.objects.filter(pk=version.pk).update(storage_path=str(root / relative))
        count += 1
    return count


def redefine_templates(echo: Callable[[str], None]) -> list[str]:
    """Define every version's halted template domains again, under this host's prefix."""
    hv, config = get_hypervisor(), engine_config()
    names: list[str] = []
    for version in ModuleVersion.objects.select_related("module"):
        try:
            spec = version.version_spec
        except SpecError as exc:
            echo(f"{version}: no template domains: {exc}")
            continue
        made = define_templates(
            hv, config, key=version_key(version.module_id, version.number),
            label=str(version), spec=spec,
        )  # fmt: skip
        for index, name in enumerate(made):
            TemplateVM.objects.filter(version=version, index=index).update(domain_name=name)
        names += made
        echo(f"version {version}: template domain(s) {', '.join(made)} defined")
    return names


def settle_clones() -> int:
    """Every clone of the backup is Failed, with nothing on the host and no pinned port."""
    for clone in Clone.objects.exclude(status=CloneStatus.FAILED):
        with contextlib.suppress(InvalidTransition):  # every status but Failed may fail
            clone_transition(clone, CloneStatus.FAILED, error=CLONE_GONE)
    Clone.objects.update(error=CLONE_GONE, storage_path="")
    CloneVM.objects.update(
        mgmt_port=0, disks=[], state="", started_at=None, ready_at=None, ready_s=None, ready_via=""
    )
    return Clone.objects.count()


def settle_runs() -> None:
    """Builds and runs in flight when the backup was taken ended with it."""
    for build in Build.objects.filter(status__in=ACTIVE):
        with contextlib.suppress(InvalidTransition):  # moved meanwhile: nothing to settle
            build_transition(build, BuildStatus.FAILED, error=RUN_GONE)
    Build.objects.filter(disks_removed=False).update(disks_removed=True, keep_disks_until=None)
    Operation.objects.filter(status__in=OPEN).update(
        status=OperationStatus.INTERRUPTED, finished_at=timezone.now(), error=RUN_GONE
    )
