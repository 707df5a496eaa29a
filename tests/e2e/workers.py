"""Running real RQ workers and management commands against the test database."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[2]


def command_env() -> dict[str, str]:
    """The environment of a child process that must see this test's database and settings."""
    from django.conf import settings

    env = dict(os.environ)
    env["DATABASE_URL"] = f"sqlite:///{connection.settings_dict['NAME']}"
    env["RUDDERVIRT_STORAGE_ROOT"] = str(settings.RUDDERVIRT_STORAGE_ROOT)
    env["RUDDERVIRT_NAME_PREFIX"] = settings.RUDDERVIRT_NAME_PREFIX
    # The images come from a loopback HTTP server: the fetch policy must let the child in too.
    env["RUDDERVIRT_FETCH_ALLOW_NETS"] = ",".join(map(str, settings.RUDDERVIRT_FETCH_ALLOW_NETS))
    env["RUDDERVIRT_FILE_SOURCE_DIRS"] = ":".join(map(str, settings.RUDDERVIRT_FILE_SOURCE_DIRS))
    env["DJANGO_SETTINGS_MODULE"] = "ruddervirt.settings"
    return env


def manage(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_worker(*queues: str, burst: bool = False) -> subprocess.Popen:
    args = [sys.executable, "manage.py", "rqworker", *queues]
    if burst:
        args.append("--burst")
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def kill_hard(process: subprocess.Popen, *extra_pids: int) -> None:
    """SIGKILL the worker and the work horse it forked (RQ puts the horse in a session of
    its own, so it is named separately): a crash, not a shutdown."""
    for pid in extra_pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
