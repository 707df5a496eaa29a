"""Making the clone records agree with libvirt, and the time limits of clones.

The clones' sweep of the one reconcile (jobs.reconcile, run on worker start and
periodically: ``manage.py reconcile``, see scripts/run.sh), after the runs' part has marked
Failed ("interrupted") every clone whose job died with its worker:

* a clone at rest whose VMs were started or stopped outside the portal gets the status
  libvirt shows; one whose domain disappeared is marked Failed with the reason;
* a running clone past its expiry date, or without console input for its inactivity
  timeout, is shut down (the student sees why);
* folders of clones that no longer exist are removed (their domains and networks carry the
  owner tag "clone": jobs.reconcile removes them).
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from django.db.models import QuerySet
from django.utils import timezone

from clones.models import Clone, CloneStatus
from clones.runner import record_states, run_inline
from clones.transitions import InvalidTransition, transition
from jobs.models import Operation
from ruddervirt.hypervisor.driver import DomainState, Hypervisor
from ruddervirt.runtime import engine_config

log = logging.getLogger(__name__)
S = CloneStatus


def reconcile_clones(hv: Hypervisor) -> list[str]:
    """The clones' sweep of the one reconcile (jobs.reconcile): states, limits, folders."""
    return sync_states(hv) + enforce_limits(hv) + remove_leftover_folders()


def live_clone_keys() -> set[str]:
    """The owner keys ("c<id>") of clones whose domains and networks must stay."""
    return {f"c{pk}" for pk in Clone.objects.values_list("pk", flat=True)}


def at_rest_unworked(statuses) -> QuerySet[Clone]:
    """Clones in `statuses` that no run is working on right now."""
    busy = Operation.objects.for_model(Clone).running().values("target_id")
    return Clone.objects.filter(status__in=statuses).exclude(pk__in=busy)


def sync_states(hv: Hypervisor) -> list[str]:
    """At-rest clones take the state libvirt reports (a guest may power itself off, an
    administrator may use virsh)."""
    actions = []
    for clone in at_rest_unworked([S.RUNNING, S.STOPPED]):
        states = record_states(clone, hv)
        if not states:
            continue
        gone = sorted(name for name, state in states.items() if state is DomainState.ABSENT)
        on = (DomainState.RUNNING, DomainState.PAUSED)  # paused is not off
        running = any(state in on for state in states.values())
        # Only from the status these states were read in: a job may have taken it since.
        seen = (clone.status,)
        try:
            if gone:
                reason = f"VM(s) {', '.join(gone)} were removed outside the portal"
                transition(clone, S.FAILED, error=reason, only_from=seen)
                actions.append(f"clone {clone.pk}: marked failed ({reason})")
            elif clone.status == S.RUNNING and not running:
                transition(
                    clone,
                    S.STOPPED,
                    note="its VMs were powered off outside the portal",
                    only_from=seen,
                )
                actions.append(f"clone {clone.pk}: now Stopped (as libvirt says)")
            elif clone.status == S.STOPPED and running:
                transition(
                    clone,
                    S.RUNNING,
                    why="its VMs run (as libvirt says)",
                    only_from=seen,
                    last_activity_at=timezone.now(),
                )
                actions.append(f"clone {clone.pk}: now Running (as libvirt says)")
        except InvalidTransition:
            continue  # a job picked it up meanwhile
    return actions


def _due_for_shutdown(clone: Clone, now) -> str | None:
    if clone.expires_at and clone.expires_at <= now:
        return f"expired on {timezone.localtime(clone.expires_at):%Y-%m-%d %H:%M}"
    if clone.inactivity_timeout_s:
        since = clone.last_activity_at or clone.started_at or clone.updated_at
        if since and now - since >= timedelta(seconds=clone.inactivity_timeout_s):
            minutes = round(clone.inactivity_timeout_s / 60)
            return f"stopped after {minutes} min without console input"
    return None


def enforce_limits(hv: Hypervisor) -> list[str]:
    """Shut down running clones past their expiry or inactivity limit (in parallel)."""
    now = timezone.now()
    stopping, actions = [], []
    for clone in at_rest_unworked([S.RUNNING]):
        why = _due_for_shutdown(clone, now)
        if why is None:
            continue
        try:
            transition(clone, S.STOPPING, note=why, only_from=(S.RUNNING,))
        except InvalidTransition:
            continue
        stopping.append(clone.pk)
        actions.append(f"clone {clone.pk}: shutting down ({why})")
    run_inline(stopping, "stop", hv=hv)  # the note stays: the student sees why it stopped
    return actions


def remove_leftover_folders() -> list[str]:
    """Folders of clones that no longer exist (their domains and networks are the owner
    tag's leftovers, removed by jobs.reconcile)."""
    live = live_clone_keys()
    root = engine_config().storage_root / "clones"
    actions = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and folder.name.isdigit() and f"c{folder.name}" not in live:
            _remove_folder(folder)
            actions.append(f"removed leftover folder {folder}")
    return actions


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
