"""Making the clone records agree with libvirt, and the time limits of clones.

Run on worker start and periodically (``manage.py reconcile``, see scripts/run.sh):

* a clone whose job died with its worker is marked Failed ("interrupted");
* a clone at rest whose VMs were started or stopped outside the portal gets the status
  libvirt shows; one whose domain disappeared is marked Failed with the reason;
* a running clone past its expiry date, or without console input for its inactivity
  timeout, is shut down (the student sees why);
* domains, networks and folders of clones that no longer exist are removed.
"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from django.utils import timezone

from clones.models import BUSY, Clone, CloneStatus
from clones.runner import record_states, run_inline
from clones.transitions import InvalidTransition, transition
from ruddervirt.engine.cleanup import remove_domain
from ruddervirt.engine.clone import KIND
from ruddervirt.hypervisor.driver import DomainState, Hypervisor
from ruddervirt.runtime import engine_config, worker_alive

log = logging.getLogger(__name__)
S = CloneStatus


def reconcile_clones(hv: Hypervisor) -> list[str]:
    """Fix what can be fixed; one line per action, for the log and the command."""
    actions = fail_interrupted()
    actions += sync_states(hv)
    actions += enforce_limits(hv)
    actions += remove_leftovers(hv)
    for line in actions:
        log.info(line)
    return actions


def fail_interrupted() -> list[str]:
    actions = []
    for clone in Clone.objects.filter(status__in=BUSY).exclude(worker=""):
        if worker_alive(clone.worker) is not False:
            continue
        reason = f"interrupted: the worker running it ({clone.worker}) is gone"
        try:
            transition(clone, S.FAILED, error=reason, worker="")
        except InvalidTransition:
            continue
        actions.append(f"clone {clone.pk}: marked failed ({reason})")
    return actions


def sync_states(hv: Hypervisor) -> list[str]:
    """At-rest clones take the state libvirt reports (a guest may power itself off, an
    administrator may use virsh)."""
    actions = []
    for clone in Clone.objects.filter(status__in=[S.RUNNING, S.STOPPED], worker=""):
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
    for clone in Clone.objects.filter(status=S.RUNNING, worker=""):
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


def remove_leftovers(hv: Hypervisor) -> list[str]:
    """Domains, networks and folders of clones that no longer exist."""
    config = engine_config()
    live = {f"c{pk}" for pk in Clone.objects.values_list("pk", flat=True)}
    actions = []
    for domain in hv.list_domains(config.name_prefix):
        key = domain.metadata.get("clone")
        if domain.metadata.get("kind") == KIND and key not in live:
            remove_domain(hv, domain.name)
            actions.append(f"removed leftover domain {domain.name}")
    for network in hv.list_networks(config.name_prefix):
        key = network.metadata.get("clone")
        if network.metadata.get("kind") == KIND and key not in live:
            if network.active:
                hv.destroy_network(network.name)
            hv.undefine_network(network.name)
            actions.append(f"removed leftover network {network.name}")
    root = config.storage_root / "clones"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and folder.name.isdigit() and f"c{folder.name}" not in live:
            _remove_folder(folder)
            actions.append(f"removed leftover folder {folder}")
    return actions


def _remove_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
