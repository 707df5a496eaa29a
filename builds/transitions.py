"""The one place a build's status changes.

Every move is checked against ALLOWED and applied with a conditional UPDATE, so a
worker finishing a build and a person cancelling it at the same moment cannot both win.
"""

from __future__ import annotations

from django.db.models import F
from django.utils import timezone

from builds.models import TERMINAL, Build, BuildStatus

S = BuildStatus
RUNNING = {S.NETWORKING, S.BUILDING, S.CAPTURING}

ALLOWED: dict[str, set[str]] = {
    S.PENDING: {S.NETWORKING, S.FAILED, S.CANCELLED},
    S.NETWORKING: {S.BUILDING, S.FAILED, S.CANCELLED, S.PENDING},
    S.BUILDING: {S.CAPTURING, S.FAILED, S.CANCELLED, S.PENDING},
    S.CAPTURING: {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PENDING},
    S.SUCCEEDED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}
# A move back to Pending is a retry (the manifest's `retries`); nothing else goes backwards.


class InvalidTransition(Exception):
    def __init__(self, current: str, new: str) -> None:
        super().__init__(f"a build cannot go from {current} to {new}")
        self.current = current
        self.new = new


def transition(build: Build, new: str, *, error: str = "") -> Build:
    """Move `build` to `new`, or raise InvalidTransition when the table or a concurrent
    writer says no. Updates `build` in place and returns it."""
    current = build.status
    if new not in ALLOWED.get(current, set()):
        raise InvalidTransition(current, new)
    now = timezone.now()
    fields: dict = {"status": new}
    if current == S.PENDING and new in RUNNING and build.started_at is None:
        fields["started_at"] = now
    if new in TERMINAL:
        fields["finished_at"] = now
    if error:
        fields["error"] = error
    if new == S.PENDING:
        fields["attempt"] = F("attempt") + 1
    moved = Build.objects.filter(pk=build.pk, status=current).update(**fields)
    if not moved:
        build.refresh_from_db(fields=["status"])
        raise InvalidTransition(build.status, new)
    build.refresh_from_db()
    return build
