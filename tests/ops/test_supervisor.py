"""The supervisor (ruddervirt/supervisor.py) with real tiny child processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ruddervirt.supervisor import (
    HISTORY_LINES,
    Backoff,
    Service,
    Supervisor,
    describe_exit,
    session_of,
)

PY = sys.executable


def py(code: str) -> tuple[str, ...]:
    return (PY, "-c", textwrap.dedent(code))


def run_until(sup: Supervisor, done, timeout: float = 20.0) -> None:
    """Tick ``sup`` until ``done()``, failing the test after ``timeout`` s; its children keep
    running (the ``supervisor`` fixture stops them)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not done in {timeout}s: {sup.children[0].history}"
        sup.tick()
        time.sleep(0.02)


@pytest.fixture
def supervised():
    """Supervisors made in a test; their children are stopped at its end."""
    made: list[Supervisor] = []
    yield made
    for sup in made:
        sup.stop_all()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet) counts as gone.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_exit_is_described_by_status_or_signal():
    assert describe_exit(3) == "with status 3"
    assert describe_exit(-9) == "with signal 9"


def test_backoff_doubles_up_to_its_cap():
    policy = Backoff(first=1, cap=30)
    assert [policy.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_exits_at_once_is_restarted_with_doubling_backoff(supervised):
    heard: list[str] = []
    sup = Supervisor(
        [Service("worker build-2", py("import sys; sys.exit(3)"))],
        backoff=Backoff(first=0.2, cap=0.4, reset_after=60, give_up_after=10),
        say=heard.append,
    )
    supervised.append(sup)
    run_until(sup, lambda: sup.children[0].restarts >= 3)
    assert heard[0].startswith("worker build-2 exited with status 3 after ")
    assert heard[0].endswith("; restarting in 0.2s (restart 1)")
    assert heard[1].endswith("; restarting in 0.4s (restart 2)")
    assert heard[2].endswith("; restarting in 0.4s (restart 3)")


def test_a_child_killed_by_a_signal_is_restarted_and_said_so(supervised):
    heard: list[str] = []
    sup = Supervisor(
        [Service("worker build-2", py("import time; time.sleep(60)"))],
        backoff=Backoff(first=0.1),
        say=heard.append,
    )
    supervised.append(sup)
    sup.tick()
    first = sup.running()["worker build-2"]
    os.kill(first, signal.SIGKILL)
    run_until(sup, lambda: sup.running().get("worker build-2", first) != first)
    assert heard[0].startswith("worker build-2 exited with signal 9 after ")
    assert "restarting in 0.1s (restart 1)" in heard[0]


def test_a_child_that_stayed_up_long_enough_restarts_after_the_first_delay_again(supervised):
    sup = Supervisor(
        [Service("flaky", py("import time, sys; time.sleep(0.6); sys.exit(1)"))],
        backoff=Backoff(first=0.1, cap=5, reset_after=0.3, give_up_after=2),
        say=lambda _line: None,
    )
    supervised.append(sup)
    run_until(sup, lambda: sup.children[0].restarts >= 3)
    assert all("restarting in 0.1s" in line for line in sup.children[0].history)
    assert not sup.given_up()


def test_a_crash_looping_child_is_given_up_while_the_others_keep_running(supervised):
    heard: list[str] = []
    sup = Supervisor(
        [
            Service("broken", py("import sys; sys.exit(1)")),
            Service("steady", py("import time; time.sleep(60)")),
        ],
        backoff=Backoff(first=0.05, cap=0.1, reset_after=60, give_up_after=3),
        say=heard.append,
    )
    supervised.append(sup)
    sup.tick()
    steady = sup.running()["steady"]
    run_until(sup, lambda: bool(sup.given_up()))
    assert sup.given_up() == ["broken"]
    assert "giving up after 3 quick restarts in a row" in heard[-1]
    assert sup.running() == {"steady": steady}
    assert alive(steady)
    sup.tick()
    assert "broken" not in sup.running()  # never started again


def test_a_periodic_service_runs_again_after_its_period_and_its_ends_are_not_restarts(supervised):
    sup = Supervisor([Service("reconcile", py("pass"), every=0.2)], say=lambda _line: None)
    supervised.append(sup)
    starts: list[int] = []

    def seen() -> bool:
        pid = sup.running().get("reconcile")
        if pid is not None and pid not in starts:
            starts.append(pid)
        return len(starts) >= 2

    started = time.monotonic()
    run_until(sup, seen)
    assert time.monotonic() - started >= 0.4  # first after 0.2 s, then 0.2 s after the end
    assert sup.children[0].restarts == 0 and not sup.children[0].history


SUPERVISED = """
import sys, time
from pathlib import Path
from ruddervirt.supervisor import Backoff, Service, Supervisor, install_signal_handlers

out = Path(sys.argv[1])
PY = sys.executable
def child(name, code):
    return Service(name, (PY, "-c", f"import os, pathlib, signal, subprocess, sys, time\\n"
        f"pathlib.Path({str(out)!r}, {name!r}).write_text(str(os.getpid()))\\n" + code))
sup = Supervisor([
    child("plain", "time.sleep(60)"),
    child("stubborn", "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"),
    child("parent", "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\\n"
        f"pathlib.Path({str(out)!r}, 'grandchild').write_text(str(p.pid))\\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"),
], grace=1.5)
install_signal_handlers(sup)
sup.run()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_stops_every_child_within_the_grace_period_and_leaves_none_behind(tmp_path, sig):
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([PY, "-c", SUPERVISED, str(tmp_path)], cwd=root, start_new_session=True)
    try:
        names = ("plain", "stubborn", "parent", "grandchild")
        deadline = time.monotonic() + 20
        while not all((tmp_path / n).exists() for n in names):
            assert time.monotonic() < deadline, "the children did not start"
            time.sleep(0.05)
        time.sleep(0.3)  # let the stubborn child install its handler
        pids = {n: int((tmp_path / n).read_text()) for n in names}
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 1.5 + 2  # grace, then SIGKILL at once
        time.sleep(0.2)  # the grandchild's reaper (init) may take a moment
        assert [n for n, pid in pids.items() if alive(pid)] == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        for pid_file in tmp_path.iterdir():  # children a failed stop left behind
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("grace", [0.5])
def test_stop_all_kills_a_child_that_ignores_sigterm_after_the_grace(grace):
    sup = Supervisor(
        [
            Service(
                "stubborn",
                py("""
            import signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print('ready', flush=True)
            time.sleep(60)
        """),
            )
        ],
        grace=grace,
        say=lambda _line: None,
    )
    sup.tick()
    pid = sup.running()["stubborn"]
    time.sleep(0.5)
    started = time.monotonic()
    sup.stop_all()
    assert grace <= time.monotonic() - started < grace + 3
    assert not alive(pid)


# A child whose grandchild leaves its process group, as RQ's work horse does (os.setpgrp()).
HORSE = """
import os, pathlib, sys, time
if os.fork() == 0:
    os.setpgrp()
    pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def start_with_horse(supervised, tmp_path, **kwargs) -> tuple[Supervisor, int, int]:
    """A supervisor of one such child, ticked once: it, the child's pid, the horse's pid."""
    sup = Supervisor([Service("worker build-1", (PY, "-c", HORSE, str(tmp_path / "horse")))],
                     say=kwargs.pop("say", lambda _line: None), **kwargs)  # fmt: skip
    supervised.append(sup)
    sup.tick()
    deadline = time.monotonic() + 20
    while not (tmp_path / "horse").exists() or not (tmp_path / "horse").read_text():
        assert time.monotonic() < deadline, "the horse did not start"
        time.sleep(0.02)
    horse = int((tmp_path / "horse").read_text())
    assert os.getpgid(horse) != sup.running()["worker build-1"]  # it left the group
    return sup, sup.running()["worker build-1"], horse


def test_stop_all_kills_a_grandchild_that_left_the_childs_process_group(supervised, tmp_path):
    sup, worker, horse = start_with_horse(supervised, tmp_path, grace=1)
    sup.stop_all()
    assert not alive(worker)
    assert not alive(horse)


def test_a_crashed_childs_leftover_processes_are_killed_before_it_restarts(supervised, tmp_path):
    heard: list[str] = []
    sup, worker, horse = start_with_horse(
        supervised, tmp_path, say=heard.append, backoff=Backoff(first=0.1)
    )
    os.kill(worker, signal.SIGKILL)
    run_until(sup, lambda: sup.running().get("worker build-1", worker) != worker)
    assert not alive(horse)
    assert heard[0] == f"killed 1 leftover process of worker build-1 (pid {horse})"
    assert heard[1].startswith("worker build-1 exited with signal 9 after ")


def test_a_periodic_service_that_runs_past_its_timeout_is_killed_and_runs_again(supervised):
    heard: list[str] = []
    sup = Supervisor(
        [Service("reconcile", py("import time; time.sleep(60)"), every=0.1, timeout=0.5)],
        say=heard.append,
    )
    supervised.append(sup)
    run_until(sup, lambda: "reconcile" in sup.running())
    first = sup.running()["reconcile"]
    run_until(sup, lambda: sup.running().get("reconcile", first) != first)
    assert not alive(first)
    assert heard[0] == "reconcile ran longer than its 0.5s timeout; killing it"
    assert heard[1].startswith("reconcile exited with signal 15 after ")


def test_the_session_id_is_read_after_the_last_parenthesis_of_the_command_name():
    stat = "4242 (a (b) c) S 1 4242 4243 0 -1 4194560 0 0"
    assert session_of(stat) == ("S", 4243)


def test_a_childs_history_keeps_only_its_last_lines(supervised):
    sup = Supervisor(
        [Service("broken", py("import sys; sys.exit(1)"))],
        backoff=Backoff(first=0.001, cap=0.001, give_up_after=HISTORY_LINES + 5),
        say=lambda _line: None,
    )
    supervised.append(sup)
    run_until(sup, lambda: sup.children[0].restarts >= HISTORY_LINES + 2, timeout=60)
    history = sup.children[0].history
    assert len(history) == HISTORY_LINES
    assert history[-1].endswith(f"(restart {sup.children[0].restarts})")
