"""The attack: another local user (or a guest that broke out into QEMU, user libvirt-qemu)
reads the host's secrets: Django's secret key (forged sessions), the SQLite database (session
keys, password hashes), the admin's first password, Redis' password. Each is created 0600 in
the very call that creates it, so there is no moment when it is readable; var/ cannot be listed.

The checks run with umask 000, where a file created by a plain open() and chmod-ed afterwards
would be world-readable in between: no chmod may be what makes these files private.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command

from ruddervirt import hostfiles

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def no_chmod(monkeypatch) -> list[str]:
    """Records every chmod of a file (folders may be chmod-ed: they hold no secret)."""
    calls: list[str] = []
    real = os.chmod

    def chmod(path, *args, **kwargs):
        if not Path(path).is_dir():
            calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    return calls


def test_the_secret_key_is_private_from_its_creation(tmp_path, open_umask, no_chmod) -> None:
    key_file = tmp_path / "var" / "secret_key"
    key = hostfiles.django_secret_key(key_file)
    assert len(key) >= 50 and mode(key_file) == 0o600 and no_chmod == []
    assert mode(key_file.parent) == 0o711  # traversable for QEMU, not listable
    assert hostfiles.django_secret_key(key_file) == key  # kept, not replaced


def test_two_processes_creating_the_key_at_once_agree_on_one(tmp_path) -> None:
    path = tmp_path / "secret_key"
    first = hostfiles.create_once(path, "first")
    assert hostfiles.create_once(path, "second") == first == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temporary left


def test_the_database_is_created_private_and_so_are_its_journals(
    tmp_path, open_umask, no_chmod
) -> None:
    db = tmp_path / "ruddervirt.sqlite3"
    hostfiles.touch_private(db)
    assert mode(db) == 0o600 and no_chmod == []
    with sqlite3.connect(db) as conn:  # an empty file is an empty database
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE session (key TEXT)")
        conn.execute("INSERT INTO session VALUES ('secret')")
        journals = [p for p in tmp_path.iterdir() if p.name != db.name]
        assert journals and all(mode(p) == 0o600 for p in journals)
    assert mode(db) == 0o600


def test_an_older_world_readable_secret_is_tightened(tmp_path) -> None:
    path = tmp_path / "ruddervirt.sqlite3"
    path.write_text("")
    path.chmod(0o644)
    hostfiles.touch_private(path)
    assert mode(path) == 0o600
    folder = tmp_path / "var"
    folder.mkdir(mode=0o755)
    hostfiles.private_dir(folder)
    assert mode(folder) == 0o711


@pytest.mark.django_db
def test_the_admin_password_is_private_and_printed_only_once(
    tmp_path, settings, open_umask, no_chmod, capsys
) -> None:
    settings.VAR_DIR = tmp_path
    call_command("ensure_admin")
    first = capsys.readouterr().out
    credentials = tmp_path / "admin-credentials.txt"
    password = credentials.read_text().split("password: ")[1].strip()
    assert password in first
    assert mode(credentials) == 0o600 and no_chmod == []
    call_command("ensure_admin")
    assert password not in capsys.readouterr().out


def test_a_fresh_checkout_gets_its_secrets_and_database_private(tmp_path) -> None:
    """settings.py and migrate, as setup runs them, on an empty var/, under umask 022."""
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SECRET_KEY", "DATABASE_URL"}}
    env.update(RUDDERVIRT_VAR_DIR=str(var), DJANGO_SETTINGS_MODULE="ruddervirt.settings")
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert mode(var) == 0o711
    assert mode(var / "secret_key") == 0o600
    assert mode(var / "ruddervirt.sqlite3") == 0o600
    for journal in var.glob("ruddervirt.sqlite3-*"):
        assert mode(journal) == 0o600, journal
