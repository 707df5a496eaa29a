"""Watch a domain while the engine waits for its guest, so a dead guest fails the wait at once.

A build VM whose QEMU paused it on an error (broken nested KVM's "emulation failure", an I/O
error) or that crashed or shut off will never answer SSH; without a watch the build would
wait out its whole SSH timeout and say only "TCP connects but no SSH banner". The watch asks
the hypervisor for the domain's fault (:meth:`Hypervisor.fault`) every ``every`` seconds and,
when there is one, sets :attr:`DomainWatch.event`, the cancel event handed to the wait, so
the wait stops within a poll. The caller's own cancel event is folded into the same event.
"""

from __future__ import annotations

import threading
from types import TracebackType

from ruddervirt.hypervisor.driver import DomainFault, Hypervisor, HypervisorError

POLL_S = 1.0
CANCEL_POLL_S = 0.05  # how soon the caller's cancel reaches the wait


class DomainWatch:
    """A context manager: ``with DomainWatch(hv, name, cancel) as watch: wait(cancel=watch.event)``;
    after a cancelled wait, ``watch.fault`` says whether the domain's fault stopped it (else it
    was ``cancel``). The watching thread ends with the block (joined with a timeout)."""

    def __init__(
        self,
        hv: Hypervisor,
        name: str,
        cancel: threading.Event | None = None,
        *,
        every: float = POLL_S,
    ) -> None:
        self.hv = hv
        self.name = name
        self.cancel = cancel
        self.every = every
        self.event = threading.Event()
        self.fault: DomainFault | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch {name}", daemon=True)

    def __enter__(self) -> DomainWatch:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        waited = self.every  # look at once
        while not self._done.is_set():
            if self.cancel is not None and self.cancel.is_set():
                self.event.set()
                return
            if waited >= self.every:
                waited = 0.0
                fault = self._fault()
                if fault is not None:
                    self.fault = fault
                    self.event.set()
                    return
            self._done.wait(CANCEL_POLL_S)
            waited += CANCEL_POLL_S

    def _fault(self) -> DomainFault | None:
        try:
            return self.hv.fault(self.name)
        except HypervisorError:
            return None  # libvirt hiccup (a restart): the wait's own timeout still holds
