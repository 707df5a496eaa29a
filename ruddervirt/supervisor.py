"""A small process supervisor: the portal's services as children that are restarted, not fatal.

``make run`` (scripts/run.sh) starts the portal, its RQ workers, the reconcile loop and the
readiness watcher through it (``python -m ruddervirt.serve``, ruddervirt/serve.py); hosts with
systemd use the unit files of deploy/systemd instead (docs/operations.md). Django-free: it only
starts ``manage.py`` and ``daphne`` as child processes and watches them.

Contract:
- every service runs as a child in its own process group (a signal to the group reaches its
  own children too);
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
- on SIGINT or SIGTERM every child's group gets SIGTERM, then SIGKILL after ``grace`` seconds,
  and :meth:`Supervisor.run` returns once all are gone. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("ruddervirt.supervisor")

TICK_S = 0.2  # how often children are polled; also the longest a signal waits to be noticed
DEFAULT_GRACE_S = 10.0
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
    ends) rather than a long-running one."""

    name: str
    argv: tuple[str, ...]
    every: float | None = None

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
    history: list[str] = field(default_factory=list)


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
            if child.proc is not None and child.proc.poll() is not None:
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
        """SIGTERM to every child's process group, SIGKILL to what is left after ``grace``."""
        alive = [c.proc for c in self.children if c.proc is not None]
        for proc in alive:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        for proc in alive:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("pid %s survived SIGKILL for 5 s", proc.pid)
            _signal_group(proc, signal.SIGKILL)  # grandchildren the leader left behind
        for child in self.children:
            child.proc = None


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def install_signal_handlers(supervisor: Supervisor) -> None:
    """SIGINT and SIGTERM ask the supervisor to stop its children and return."""

    def handler(signum: int, _frame: object) -> None:
        supervisor.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
