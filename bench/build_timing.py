"""Timestamps for the build benchmark: a thread-safe timeline and a Reporter that feeds it.

Every Reporter call the engine makes (phases, steps, log lines) is stamped with
``time.monotonic()`` at the moment of the call, before the wrapped reporter does its own
work (a database write, for the portal's DBReporter). The phase split of one build is
read back from these events by :mod:`bench.build_phases`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ruddervirt.engine.phases import BuildPhase, VMPhase


@dataclass(frozen=True)
class Event:
    t: float  # time.monotonic()
    kind: str  # build_phase, vm_phase, vm_domain, step_started, step_finished, log, line
    vm: str
    text: str
    stream: str = ""


class Timeline:
    """An append-only list of events, written from any thread."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self.interrupted = threading.Event()  # set on Ctrl-C: the build is asked to stop

    def add(self, kind: str, vm: str = "", text: str = "", stream: str = "") -> None:
        event = Event(time.monotonic(), kind, vm, text, stream)
        with self._lock:
            self._events.append(event)

    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)


class TimedMixin:
    """Stamps every Reporter call on ``self.timeline``, then delegates to the next class.

    Mixed in front of a concrete reporter class by :func:`timed_reporter_class`.
    ``poll()`` answers "interrupted" once ``timeline.interrupted`` is set, which makes the
    engine cancel the build and clean up as it would for a person's Cancel.
    """

    timeline: Timeline

    def build_phase(self, phase: BuildPhase) -> None:
        self.timeline.add("build_phase", "", phase)
        super().build_phase(phase)  # type: ignore[misc]

    def vm_phase(self, vm: str, phase: VMPhase, message: str = "") -> None:
        self.timeline.add("vm_phase", vm, phase)
        super().vm_phase(vm, phase, message)  # type: ignore[misc]

    def vm_domain(self, vm: str, domain_name: str) -> None:
        # The engine reports the domain right after defining it, right before starting it.
        self.timeline.add("vm_domain", vm, domain_name)
        super().vm_domain(vm, domain_name)  # type: ignore[misc]

    def step_started(self, vm: str, index: int) -> None:
        self.timeline.add("step_started", vm, str(index))
        super().step_started(vm, index)  # type: ignore[misc]

    def step_finished(
        self, vm: str, index: int, *, ok: bool, exit_code: int | None = None, message: str = ""
    ) -> None:
        self.timeline.add("step_finished", vm, str(index))
        super().step_finished(  # type: ignore[misc]
            vm, index, ok=ok, exit_code=exit_code, message=message
        )

    def log(self, text: str, *, vm: str = "", stream: str = "info") -> None:
        self.timeline.add("log", vm, text, stream)
        super().log(text, vm=vm, stream=stream)  # type: ignore[misc]

    def poll(self) -> str | None:
        if self.timeline.interrupted.is_set():
            return "interrupted by Ctrl-C"
        return super().poll()  # type: ignore[misc]


def timed_reporter_class(base: type, timeline: Timeline) -> type:
    """A subclass of reporter class ``base`` that records on ``timeline`` (see TimedMixin)."""
    return type(f"Timed{base.__name__}", (TimedMixin, base), {"timeline": timeline})
