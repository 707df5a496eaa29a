"""Cancel events and short sleeps, shared by the blocking loops of the SSH package."""

from __future__ import annotations

import threading
import time

from ruddervirt.guest.errors import Cancelled

SLICE = 0.05  # how often blocking loops look at cancel events and deadlines


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise Cancelled when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


def sleep(seconds: float, cancel: threading.Event | None) -> None:
    """Sleep, waking up (and raising Cancelled) as soon as ``cancel`` is set."""
    if cancel is None:
        time.sleep(max(seconds, 0))
    elif cancel.wait(max(seconds, 0)):
        raise Cancelled("cancelled")
