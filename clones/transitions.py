"""The only place a clone's status changes: a table of allowed moves and one guarded update."""

from __future__ import annotations

from collections.abc import Collection

from django.utils import timezone

from clones.models import Clone, CloneStatus

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


class InvalidTransition(Exception):
    def __init__(self, clone: Clone, current: str, new: str) -> None:
        super().__init__(f"clone {clone.pk} is {current}: it cannot become {new} now")
        self.current = current
        self.new = new


def transition(
    clone: Clone,
    new: str,
    *,
    error: str | None = None,
    only_from: Collection[str] | None = None,
    **fields,
) -> Clone:
    """Move `clone` from the status it has in the database to `new`, or raise
    InvalidTransition (also when someone else moved it first, or when its status is not in
    `only_from`). `error` replaces the clone's message (default: cleared on every move
    except to Failed); other keyword arguments are fields to set in the same update."""
    current = Clone.objects.filter(pk=clone.pk).values_list("status", flat=True).first()
    allowed = ALLOWED.get(current, ()) if current is not None else ()
    if new not in allowed or (only_from is not None and current not in only_from):
        raise InvalidTransition(clone, current or "gone", new)
    updates = {"status": new, "updated_at": timezone.now(), **fields}
    if error is not None:
        updates["error"] = error
    elif new != S.FAILED:
        updates["error"] = ""
    if new == S.RUNNING and "started_at" not in fields:
        updates["started_at"] = timezone.now()
    moved = Clone.objects.filter(pk=clone.pk, status=current).update(**updates)
    if not moved:
        raise InvalidTransition(clone, current, new)
    for key, value in updates.items():
        setattr(clone, key, value)
    return clone
