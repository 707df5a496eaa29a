"""The one place a build's status changes: the table of allowed moves and the build's rules
for what a move writes, bound to the shared machinery (modules.lifecycle).

A worker moves its own build, so the caller's copy of the status is the one it claims to
move from: a copy that is out of date lost a race (to a cancel, to recovery) and raises
InvalidTransition with the status the build has now (also put on the copy).
"""

from __future__ import annotations

from typing import Any

from django.db.models import F
from django.utils import timezone

from builds.models import TERMINAL, Build, BuildStatus, BuildStatusChange
from modules.lifecycle import InvalidTransition, Transition, transition_for

__all__ = ["ALLOWED", "InvalidTransition", "transition"]

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


def _changes(build: Build, current: str, new: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Start and finish times, the attempt count on a retry; `error` only when given."""
    now = timezone.now()
    updates = {key: value for key, value in fields.items() if key != "error"}
    if current == S.PENDING and new in RUNNING and build.started_at is None:
        updates["started_at"] = now
    if new in TERMINAL:
        updates["finished_at"] = now
    if fields.get("error"):
        updates["error"] = fields["error"]
    if new == S.PENDING:
        updates["attempt"] = F("attempt") + 1
    return updates


transition: Transition[Build] = transition_for(
    Build, ALLOWED, BuildStatusChange, changes=_changes, callers_copy_is_claim=True
)
