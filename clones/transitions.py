"""The only place a clone's status changes: the table of allowed moves and the clone's rules
for what a move writes, bound to the shared machinery (modules.lifecycle).

A clone moves from the status its row has now (jobs and requests act on whatever the
database says); `only_from` narrows that (requests only from a resting status).
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from clones.models import Clone, CloneStatus, CloneStatusChange
from modules.lifecycle import InvalidTransition, Transition, transition_for

__all__ = ["ALLOWED", "InvalidTransition", "transition"]

S = CloneStatus
ALLOWED: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.PROVISIONING, S.FAILED, S.DELETING}),
    S.PROVISIONING: frozenset({S.RUNNING, S.STOPPED, S.FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.FAILED}),
    # Running -> Stopped/Failed also when reconcile finds the VMs off or gone; Running ->
    # Starting powers on a VM that was powered off alone.
    S.RUNNING: frozenset({S.STARTING, S.STOPPING, S.PROVISIONING, S.DELETING, S.STOPPED, S.FAILED}),
    # Stopping -> Starting: a restart.
    S.STOPPING: frozenset({S.STOPPED, S.STARTING, S.RUNNING, S.FAILED}),
    S.STOPPED: frozenset({S.STARTING, S.PROVISIONING, S.DELETING, S.RUNNING, S.FAILED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPING, S.PROVISIONING, S.DELETING, S.RUNNING, S.STOPPED}),
    S.DELETING: frozenset({S.FAILED}),
}


def _changes(clone: Clone, current: str, new: str, fields: dict[str, Any]) -> dict[str, Any]:
    """`error` replaces the clone's message (None, the default: cleared on every move except
    to Failed); Running stamps `started_at` unless given; the other fields are written as is."""
    now = timezone.now()
    error = fields.get("error")
    updates = {"updated_at": now, **{k: v for k, v in fields.items() if k != "error"}}
    if error is not None:
        updates["error"] = error
    elif new != S.FAILED:
        updates["error"] = ""
    if new == S.RUNNING and "started_at" not in fields:
        updates["started_at"] = now
    return updates


transition: Transition[Clone] = transition_for(Clone, ALLOWED, CloneStatusChange, changes=_changes)
