"""A small process supervisor: the portal's services as children that are restarted, not fatal.

``make run`` (scripts/run.sh) starts the portal, its RQ workers, the reconcile loop and the
readiness watcher through it (``python -m ruddervirt.serve``, ruddervirt/serve.py); hosts with
systemd use the unit files of deploy/systemd instead (docs/operations.md). Django-free: it only
starts ``manage.py`` and ``daphne`` as child processes and watches them.

Contract:
- every service runs as a child in its own session (``start_new_session``); a stop reaches
  every process of that session, found in /proc, so also those that left the child's process
  group (RQ's work horse calls ``os.setpgrp()``, and runs the build);
- when a child exits while the supervisor runs, what is left of its session (a dead worker's
  horse) gets SIGTERM, then SIGKILL after ``LEFTOVER_GRACE_S``, before the child is started
  again, and that is said ("killed 1 leftover process of worker build-1 (pid 1234)");
- a child that exits while the supervisor runs is started again after a back-off that starts
  at ``Backoff.first`` seconds and doubles up to ``Backoff.cap``; it returns to ``first`` once a
  child stayed up ``Backoff.reset_after`` seconds. Each restart is said on the console and in
  the log ("worker build-2 exited with signal 9 after 12.3s; restarting in 1s (restart 3)");
- a service restarted ``Backoff.give_up_after`` times in a row, each time exiting within
  ``reset_after`` seconds of its start, is given up on when it exits so once more (a crash
  loop); the others keep running;
- a *periodic* service (``every`` set: the reconcile pass) is a command first run ``every``
  seconds after the start, then again ``every`` seconds after it ended, whatever its exit
  status: its ends are not crashes;
- a service with a ``timeout`` (the reconcile pass) that runs longer than that has its session
  killed (SIGTERM, ``LEFTOVER_GRACE_S``, SIGKILL), which is said; a periodic one runs again
  ``every`` seconds later, as after any end;
- on SIGINT, SIGTERM or SIGHUP (a closed terminal) every process of every child's session gets
  SIGTERM, then SIGKILL after ``grace`` seconds, and :meth:`Supervisor.run` returns once all
  are gone. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ruddervirt.supervisor")

TICK_S = 0.2  # how often children are polled; also the longest a signal waits to be noticed
DEFAULT_GRACE_S = 10.0
LEFTOVER_GRACE_S = 3.0  # SIGTERM to SIGKILL for what is left of an exited or timed-out child
KILLED_WAIT_S = 5.0  # how long processes sent SIGKILL are waited for
HISTORY_LINES = 50  # the last lines said about each child, kept in _Child.history
START = "{start}"


@dataclass(frozen=True)
class Backoff:
    """The restart policy (see the module's contract)."""

    first: float = 1.0
    cap: float = 30.0
    reset_after: float = 60.0
    give_up_after: int = 10  # consecutive quick exits

    def delay(self, quick_exits: int) -> float:
        """The wait before restart number ``quick_exits`` of a run of quick exits (1, 2, ...)."""
        return min(self.first * 2 ** max(quick_exits - 1, 0), self.cap)


@dataclass(frozen=True)
class Service:
    """One supervised command. ``every``: a periodic command (run again ``every`` s after it
    ends) rather than a long-running one. ``timeout``: the longest one run may take before
    its session is killed (None: no limit)."""

    name: str
    argv: tuple[str, ...]
    every: float | None = None
    timeout: float | None = None

    def argv_for(self, start: int) -> tuple[str, ...]:
        """The command of start number ``start`` (1, 2, ...): ``{start}`` in an argument
        becomes that number (an RQ worker's name must differ from a killed one's, whose
        registration stays in Redis for minutes)."""
        return tuple(arg.replace(START, str(start)) for arg in self.argv)


@dataclass
class _Child:
    service: Service
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    quick_exits: int = 0
    starts: int = 0
    restarts: int = 0
    given_up: bool = False
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY_LINES))


def describe_exit(returncode: int) -> str:
    """ "with status 3" or "with signal 9" (Popen's negative return codes)."""
    return f"with signal {-returncode}" if returncode < 0 else f"with status {returncode}"


class Supervisor:
    """Runs ``services`` until :meth:`stop` is called (or a signal handler calls it)."""

    def __init__(
        self,
        services: Sequence[Service],
        *,
        backoff: Backoff = Backoff(),
        grace: float = DEFAULT_GRACE_S,
        say: Callable[[str], None] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children = [_Child(s) for s in services]
        for child in self.children:
            if child.service.every is not None:
                child.next_start = clock() + child.service.every
        self.backoff = backoff
        self.grace = grace
        self.say = say or (lambda line: print(line, flush=True))
        self.env = env
        self.cwd = cwd
        self.clock = clock
        self.stopping = False

    # --- the loop ---------------------------------------------------------------------
    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """Start every service and keep them running until :meth:`stop` (or ``until()`` is
        true), then stop all children (SIGTERM, ``grace`` s, SIGKILL) and return."""
        try:
            while not self.stopping and not (until is not None and until()):
                self.tick()
                time.sleep(TICK_S)
        finally:
            self.stop_all()

    def stop(self) -> None:
        """Ask :meth:`run` to stop (safe from a signal handler)."""
        self.stopping = True

    def tick(self) -> None:
        """One pass: notice exits, start what is due."""
        now = self.clock()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                self._check_timeout(child, now)
            if child.proc is not None and child.proc.poll() is not None:
                self._leftovers(child)
                self._exited(child, child.proc.returncode, now)
            if child.proc is None and not child.given_up and now >= child.next_start:
                self._start(child, now)

    def running(self) -> dict[str, int]:
        """The pid of every service running now, by name."""
        return {c.service.name: c.proc.pid for c in self.children if c.proc is not None}

    def given_up(self) -> list[str]:
        return [c.service.name for c in self.children if c.given_up]

    # --- children -----------------------------------------------------------------------
    def _start(self, child: _Child, now: float) -> None:
        child.starts += 1
        child.started_at = now
        argv = child.service.argv_for(child.starts)
        try:
            child.proc = subprocess.Popen(  # argv lists from Service, no shell
                argv, start_new_session=True, env=self.env, cwd=self.cwd
            )
        except OSError as exc:
            self._note(child, f"{child.service.name} did not start: {exc}")
            self._exited(child, 127, now)

    def _check_timeout(self, child: _Child, now: float) -> None:
        """Kill the session of a child that has run longer than its service's timeout; the
        next tick sees its exit."""
        timeout = child.service.timeout
        if timeout is None or child.proc is None or now - child.started_at <= timeout:
            return
        name = child.service.name
        self._note(
            child, f"{name} ran longer than its {timeout:g}s timeout; killing it", logging.ERROR
        )
        kill_sessions([child.proc.pid], LEFTOVER_GRACE_S, [child.proc])

    def _leftovers(self, child: _Child) -> None:
        """Kill what is left of the session of ``child``'s exited process, and say so."""
        assert child.proc is not None
        killed = kill_sessions([child.proc.pid], LEFTOVER_GRACE_S, [child.proc])
        if killed:
            pids = ", ".join(str(p) for p in killed)
            self._note(
                child,
                f"killed {len(killed)} leftover process{'es' if len(killed) > 1 else ''} of "
                f"{child.service.name} (pid{'s' if len(killed) > 1 else ''} {pids})",
            )

    def _exited(self, child: _Child, returncode: int, now: float) -> None:
        child.proc = None
        up = now - child.started_at
        name = child.service.name
        if child.service.every is not None:
            child.next_start = now + child.service.every
            if returncode != 0:
                self._note(child, f"{name} exited {describe_exit(returncode)} after {up:.1f}s")
            return
        child.quick_exits = 1 if up >= self.backoff.reset_after else child.quick_exits + 1
        if child.quick_exits > self.backoff.give_up_after:
            child.given_up = True
            self._note(
                child,
                f"{name} exited {describe_exit(returncode)} after {up:.1f}s; giving up after "
                f"{child.quick_exits - 1} quick restarts in a row (the others keep running)",
                level=logging.ERROR,
            )
            return
        delay = self.backoff.delay(child.quick_exits)
        child.restarts += 1
        child.next_start = now + delay
        self._note(
            child,
            f"{name} exited {describe_exit(returncode)} after {up:.1f}s; "
            f"restarting in {delay:g}s (restart {child.restarts})",
        )

    def _note(self, child: _Child, line: str, level: int = logging.WARNING) -> None:
        child.history.append(line)
        log.log(level, line)
        self.say(line)

    def stop_all(self) -> None:
        """SIGTERM to every process of every child's session, SIGKILL to those left after
        ``grace``; returns once they are gone (or after 5 s more, said in the log)."""
        procs = [c.proc for c in self.children if c.proc is not None]
        kill_sessions([p.pid for p in procs], self.grace, procs)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("pid %s survived SIGKILL for 5 s", proc.pid)
        for child in self.children:
            child.proc = None


# --- sessions -------------------------------------------------------------------------------
def session_of(stat: str) -> tuple[str, int]:
    """The state letter and the session id in the text of a /proc/<pid>/stat file. The
    command name (2nd field) is in parentheses and may hold spaces and parentheses itself,
    so the fields are counted from the last ')'."""
    fields = stat[stat.rindex(")") + 1 :].split()
    return fields[0], int(fields[3])  # state, ppid, pgrp, session


def session_members(sessions: Iterable[int]) -> list[int]:
    """The pids of the live (not zombie) processes in any of ``sessions``, from /proc."""
    wanted = set(sessions)
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, session = session_of((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or unreadable
        if session in wanted and state != "Z":
            members.append(int(entry.name))
    return sorted(members)


def kill_sessions(
    sessions: Sequence[int], grace: float, procs: Sequence[subprocess.Popen] = ()
) -> list[int]:
    """SIGTERM to every live process of ``sessions``, SIGKILL to those still alive after
    ``grace`` s, and waits up to ``KILLED_WAIT_S`` for those to go; ``procs`` (our own children
    among them) are reaped meanwhile, so that they do not count as alive. Returns the pids that
    got SIGTERM (empty: nothing was left)."""
    signalled = session_members(sessions)
    _signal_all(signalled, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = signalled
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        for proc in procs:
            proc.poll()
        left = session_members(sessions)
    _signal_all(session_members(sessions), signal.SIGKILL)
    deadline = time.monotonic() + KILLED_WAIT_S
    while session_members(sessions) and time.monotonic() < deadline:
        time.sleep(0.02)  # SIGKILL is not instant; init reaps orphans
        for proc in procs:
            proc.poll()
    return signalled


def _signal_all(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def install_signal_handlers(supervisor: Supervisor) -> None:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) ask the supervisor to stop its children
    and return."""

    def handler(signum: int, _frame: object) -> None:
        supervisor.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
