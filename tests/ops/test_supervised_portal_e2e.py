"""`make run`'s supervisor with the real services: a SIGKILLed RQ worker is restarted (and
said so) while the portal keeps answering; SIGTERM then stops everything it started.

The real `python -m ruddervirt.serve` (what scripts/run.sh execs) on a free loopback port,
against the file-backed test database (as tests/browser/live.py's portal) and the tests'
Redis; one build and one clone worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.db import connection

from tests.browser.live import ROOT, LivePortal

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children(pid: int) -> dict[int, str]:
    """The live child processes of ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    """``pid`` runs (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def one(pid: int, word: str) -> int | None:
    pids = [child for child, cmdline in children(pid).items() if word in cmdline]
    return pids[0] if len(pids) == 1 else None


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return answer.status == 200
    except OSError:
        return False


def readiness(port: int) -> dict | None:
    """/healthz/ready's answer (200 or 503), or None while the portal does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz/ready", timeout=10) as ok:
            return json.load(ok)
    except urllib.error.HTTPError as failing:
        return json.load(failing)
    except OSError:
        return None


def wait(what: str, check, timeout: float = START_TIMEOUT_S, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not within {timeout}s\n{tail}")


def test_a_sigkilled_build_worker_is_restarted_and_the_portal_keeps_answering(tmp_path):
    database = connection.settings_dict["NAME"]
    if connection.vendor != "sqlite" or not Path(str(database)).is_absolute():
        pytest.skip("the supervised portal needs the file-backed SQLite test database")
    port = free_port()
    env = LivePortal(str(database), tmp_path).environment()
    env.update(
        RUDDERVIRT_HOST="127.0.0.1", RUDDERVIRT_PORT=str(port),
        RUDDERVIRT_BUILD_WORKERS="1", RUDDERVIRT_CLONE_WORKERS="1",
        RUDDERVIRT_SUPERVISOR_LOG=str(tmp_path / "supervisor.log"),
    )  # fmt: skip
    console = tmp_path / "console.log"
    with console.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "ruddervirt.serve"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    started: set[int] = set()
    try:
        wait("the portal answers", lambda: healthy(port), log=console)
        worker = wait("one build worker", lambda: one(supervisor.pid, "rqworker builds"))
        # The health endpoint sees the real database, Redis, libvirtd and both workers.
        every = {"database": "ok", "redis": "ok", "libvirtd": "ok", "workers": "ok"}
        wait("all healthy", lambda: (readiness(port) or {}).get("checks") == every, log=console)
        portal = one(supervisor.pid, "daphne")
        started |= set(children(supervisor.pid))
        os.kill(worker, signal.SIGKILL)
        restarted = wait(
            "a new build worker",
            lambda: (p := one(supervisor.pid, "rqworker builds")) not in (None, worker) and p,
            log=console,
        )
        started |= set(children(supervisor.pid))
        said = console.read_text()
        assert "worker build-1 exited with signal 9 after " in said
        assert "restarting in 1s (restart 1)" in said
        assert "worker build-1 exited with signal 9" in (tmp_path / "supervisor.log").read_text()
        time.sleep(3)  # the new worker stays up: it registered with RQ under a new name
        assert one(supervisor.pid, "rqworker builds") == restarted
        assert "restart 2" not in console.read_text()
        assert healthy(port)
        assert one(supervisor.pid, "daphne") == portal  # the portal was never restarted
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(timeout=10)
    assert supervisor.returncode == 0
    assert "RudderVirt stopped." in console.read_text()
    assert [pid for pid in started if alive(pid)] == []
