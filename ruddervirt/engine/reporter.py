"""What the engine tells the outside world, and what it asks of it."""

from __future__ import annotations

import threading
from typing import Protocol

from ruddervirt.engine.phases import BuildPhase, VMPhase


class Reporter(Protocol):
    """Receives progress from the engine. Called from several threads at once:
    implementations must be thread-safe."""

    def build_phase(self, phase: BuildPhase) -> None: ...

    def vm_phase(self, vm: str, phase: VMPhase, message: str = "") -> None: ...

    def vm_domain(self, vm: str, domain_name: str) -> None: ...

    def step_started(self, vm: str, index: int) -> None: ...

    def step_waiting(self, vm: str, index: int) -> None: ...

    def step_finished(
        self, vm: str, index: int, *, ok: bool, exit_code: int | None = None, message: str = ""
    ) -> None: ...

    def step_reused(
        self, vm: str, index: int, *, key: str, from_build: int | None, saved_s: float
    ) -> None:
        """Step ``index`` did not run: the step cache had its result (checkpoint ``key``),
        made by build ``from_build`` (the portal's number, None when not known), whose
        run of the step took ``saved_s`` seconds."""
        ...

    def log(self, text: str, *, vm: str = "", stream: str = "info") -> None: ...

    def poll(self) -> str | None:
        """Called about twice a second by the build's monitor thread. Returns a reason
        to stop (e.g. "cancelled by alice") or None; also the place for a heartbeat."""
        ...

    def user_decision(self, vm: str, index: int) -> tuple[str, str] | None:
        """For a handbuild step: ("continue", "") or ("fail", reason) once a person
        decided, else None."""
        ...


class Stopper:
    """A cancel flag with a reason, shared by every thread of one build."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self._lock = threading.Lock()

    def stop(self, reason: str) -> None:
        with self._lock:
            if not self.event.is_set():
                self.reason = reason
                self.event.set()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True when the build was stopped meanwhile."""
        return self.event.wait(seconds)


class NullReporter:
    """A reporter that prints nothing and never cancels (for scripts and benchmarks)."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.lines: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def build_phase(self, phase: BuildPhase) -> None:
        self.log(f"build phase: {phase}")

    def vm_phase(self, vm: str, phase: VMPhase, message: str = "") -> None:
        self.log(f"phase {phase}{': ' + message if message else ''}", vm=vm)

    def vm_domain(self, vm: str, domain_name: str) -> None:
        pass

    def step_started(self, vm: str, index: int) -> None:
        pass

    def step_waiting(self, vm: str, index: int) -> None:
        pass

    def step_finished(self, vm, index, *, ok, exit_code=None, message="") -> None:
        pass

    def step_reused(
        self, vm: str, index: int, *, key: str, from_build: int | None, saved_s: float
    ) -> None:
        pass

    def log(self, text: str, *, vm: str = "", stream: str = "info") -> None:
        with self._lock:
            self.lines.append((vm, stream, text))
        if self.echo:
            print(f"[{vm or 'build'}] {text}", flush=True)

    def poll(self) -> str | None:
        return None

    def user_decision(self, vm: str, index: int) -> tuple[str, str] | None:
        return None
