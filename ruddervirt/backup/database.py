"""The database part of a backup, per engine.

SQLite (what RudderVirt uses now): a consistent online copy through sqlite3's backup API,
taken in one step while the portal keeps writing (WAL: readers never block the writers),
turned into a self-contained rollback-journal file. Restoring copies it over the target
database the same way. Versions and migrations are read from the *copy*, so the disks a
backup takes are exactly those of the versions in its database.

Another engine gets a class with the same three methods; PostgreSQL's would run `pg_dump
--format=custom` (its snapshot is consistent by itself) and `pg_restore`, through
ruddervirt.proc, and read versions in the dump's snapshot (`pg_dump --snapshot`). Until then
a backup of a PostgreSQL portal is refused with a clear message.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruddervirt.backup.archive import FILE_MODE, BackupError

SQLITE_FILE = "database.sqlite3"
BUSY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VersionRow:
    module_id: int
    module: str
    number: int
    storage_path: str
    spec: dict[str, Any] | None


class SqliteDatabase:
    engine = "sqlite"
    file = SQLITE_FILE

    def __init__(self, name: str) -> None:
        self.name = name

    def snapshot(self, dest: Path) -> None:
        """A consistent copy of the live database in new file `dest` (0600)."""
        dest.touch(mode=FILE_MODE, exist_ok=False)
        source = sqlite3.connect(self.name, timeout=BUSY_TIMEOUT_S)
        try:
            with contextlib.closing(sqlite3.connect(dest)) as target:
                source.backup(target)  # pages=-1: the whole database in one read transaction
                target.execute("PRAGMA journal_mode=DELETE")  # no -wal/-shm beside the copy
        finally:
            source.close()

    def load(self, src: Path) -> None:
        """Replace the live database's content with the copy `src` (the caller has closed
        Django's connections)."""
        with (
            contextlib.closing(_read_only(src)) as source,
            contextlib.closing(sqlite3.connect(self.name, timeout=BUSY_TIMEOUT_S)) as target,
        ):
            source.backup(target)


def for_connection(settings_dict: dict[str, Any]) -> SqliteDatabase:
    """The engine of Django's database `settings_dict`; BackupError for one not supported."""
    engine = str(settings_dict.get("ENGINE", ""))
    if engine == "django.db.backends.sqlite3":
        name = str(settings_dict["NAME"])
        if name in {"", ":memory:"}:
            raise BackupError("the database is in memory: nothing to back up")
        return SqliteDatabase(name)
    raise BackupError(
        f"backups of a {engine.rsplit('.', 1)[-1]} database are not supported yet "
        f"(only SQLite); back it up with its own tools (PostgreSQL: pg_dump)"
    )


def _read_only(path: Path) -> sqlite3.Connection:
    # immutable: nothing (no -shm, no journal) is created beside a file in the backup.
    return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    try:
        connection = _read_only(path)
        connection.execute("SELECT 1 FROM django_migrations LIMIT 1")
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path}: not a RudderVirt database: {exc}") from exc
    try:
        yield connection
    finally:
        connection.close()


def migrations(path: Path) -> list[tuple[str, str]]:
    """The migrations applied in the database copy `path`, as (app, name)."""
    with reading(path) as db:
        rows = db.execute("SELECT app, name FROM django_migrations ORDER BY id").fetchall()
    return [(str(app), str(name)) for app, name in rows]


def versions(path: Path) -> list[VersionRow]:
    """Every module version in the database copy `path`."""
    query = (
        "SELECT m.id, m.name, v.number, v.storage_path, v.spec FROM builds_moduleversion v "
        "JOIN modules_module m ON m.id = v.module_id ORDER BY m.name, v.number"
    )
    with reading(path) as db:
        rows = db.execute(query).fetchall()
    return [
        VersionRow(int(mid), str(name), int(number), str(where), json.loads(spec) if spec else None)
        for mid, name, number, where, spec in rows
    ]


def count(path: Path, table: str) -> int:
    with reading(path) as db:
        return int(db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0])  # noqa: S608
