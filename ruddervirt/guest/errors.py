"""The errors of talking to a guest, whatever the transport (SSH today, a fake in tests).

Every public function and method of ``ruddervirt.guest`` raises a ``GuestError`` for a failure
on the guest's side (``ValueError`` for invalid arguments, ``OSError`` for unreadable local
files), so the engine can tell a guest problem from its own bugs.
"""

from __future__ import annotations


class GuestError(Exception):
    """Base class of every guest-side failure."""


class Cancelled(GuestError):
    """The caller's cancel event was set."""


class WaitTimeout(GuestError):
    """The guest did not accept a session in time; ``reason`` says why (the most informative
    failure), after ``elapsed`` seconds and ``attempts`` connection attempts."""

    def __init__(self, message: str, *, reason: str, elapsed: float, attempts: int) -> None:
        super().__init__(message)
        self.reason, self.elapsed, self.attempts = reason, elapsed, attempts


class CommandTimeout(GuestError):
    """A command or transfer exceeded its timeout; its channel was closed."""


class ConnectionLost(GuestError):
    """The connection died while an operation was in progress."""


class HostKeyMismatch(GuestError):
    """The guest presented a different host key than the one pinned for it."""


class TransferFailed(GuestError):
    """An upload or download failed in the guest (missing folder, no permission, ...)."""


class RebootFailed(GuestError):
    """The reboot command failed or the guest did not come back in time."""
