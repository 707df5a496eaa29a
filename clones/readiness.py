"""When each clone VM became ready (its guest booted), recorded on its CloneVM row.

* The runner calls :func:`mark_started` right after it boots VMs (provision, reprovision,
  start, restart): ``started_at`` is stamped and the ready fields are cleared; and
  :func:`clear` after it powers VMs off.
* :func:`probe_pass` asks every running VM of a Running clone that is not ready yet, once
  (ruddervirt.engine.readiness: the guest agent, else the SSH banner), and records those
  that answered: ``ready_at``, ``ready_s`` (seconds from ``started_at``) and ``ready_via``.
  Nothing runs it inside a worker (RQ jobs run in short-lived forked work horses): the
  ``watch_ready`` command repeats it every couple of seconds beside the portal
  (scripts/run.sh), and ``launch_class --wait-ready`` runs it itself about every second
  (:func:`wait_ready`). Both may run at once: a VM is recorded ready once, for the boot
  it was probed in (a conditional UPDATE on ``started_at``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime

from django.db.models import QuerySet
from django.utils import timezone

from clones.models import CloneStatus, CloneVM
from ruddervirt.engine import readiness as engine
from ruddervirt.hypervisor.driver import DomainFault, DomainState, Hypervisor, HypervisorError

WAIT_INTERVAL_S = 1.0  # launch_class --wait-ready: one probe pass about this often
OFF = (DomainState.SHUTOFF, DomainState.ABSENT, DomainState.CRASHED)
_CLEARED = {"ready_at": None, "ready_s": None, "ready_via": ""}


# --- the runner's hooks ----------------------------------------------------------------
def off_vms(clone_id: int, hv: Hypervisor, vm: str | None = None) -> list[str]:
    """The clone's VMs (or only `vm`) that are off now: those a start is about to boot."""
    vms = CloneVM.objects.filter(clone_id=clone_id, **({"name": vm} if vm else {}))
    return [v.name for v in vms if hv.state(v.domain_name) in OFF]


def mark_started(clone_id: int, names: Iterable[str], *, at: float | None = None) -> None:
    """The VMs `names` of the clone were just booted (or restored), at `at` (time.time();
    None: now): readiness starts over from then."""
    when = datetime.fromtimestamp(at, tz=UTC) if at is not None else timezone.now()
    CloneVM.objects.filter(clone_id=clone_id, name__in=list(names)).update(
        started_at=when, **_CLEARED
    )


def clear(clone_id: int, vm: str | None = None) -> None:
    """The clone's VMs (or only `vm`) were powered off: neither booted nor ready."""
    vms = CloneVM.objects.filter(clone_id=clone_id, **({"name": vm} if vm else {}))
    vms.update(started_at=None, **_CLEARED)


# --- probing ---------------------------------------------------------------------------
def pending(clone_ids: Collection[int] | None = None) -> QuerySet[CloneVM]:
    """VMs to probe: running, of a Running clone, not ready since they were started."""
    vms = CloneVM.objects.filter(
        clone__status=CloneStatus.RUNNING,
        state=DomainState.RUNNING.value,
        ready_at__isnull=True,
    )
    if clone_ids is not None:
        vms = vms.filter(clone_id__in=list(clone_ids))
    return vms.order_by("clone_id", "index")


def probe_pass(
    hv: Hypervisor,
    clone_ids: Collection[int] | None = None,
    *,
    timeout: float = engine.PROBE_TIMEOUT_S,
) -> list[str]:
    """Probe every pending VM once (of `clone_ids`, or of all clones) and record those that
    answered; one line per VM that became ready."""
    vms = list(pending(clone_ids))
    if not vms:
        return []
    targets = [engine.ProbeTarget(vm.domain_name, vm.mgmt_port) for vm in vms]
    answers = engine.probe_all(hv, targets, timeout=timeout)
    lines = []
    for vm in vms:
        answer = answers.get(vm.domain_name)
        if answer is not None and record_ready(vm, answer):
            took = f" in {vm.ready_s:.1f}s" if vm.ready_s is not None else ""
            lines.append(f"clone {vm.clone_id} VM {vm.name}: ready{took} ({answer.via})")
    return lines


def record_ready(vm: CloneVM, answer: engine.Answer) -> bool:
    """Record that `vm` answered (unless it was restarted or recorded meanwhile); updates
    `vm` in place. False when nothing was written."""
    at = datetime.fromtimestamp(answer.at, tz=UTC)
    took = max((at - vm.started_at).total_seconds(), 0.0) if vm.started_at else None
    fields = {"ready_at": at, "ready_s": took, "ready_via": answer.via}
    moved = CloneVM.objects.filter(
        pk=vm.pk, ready_at__isnull=True, started_at=vm.started_at
    ).update(**fields)
    if moved:
        vm.ready_at, vm.ready_s, vm.ready_via = at, took, answer.via
    return bool(moved)


def wait_ready(
    clone_ids: Collection[int],
    hv: Hypervisor,
    *,
    timeout: float,
    interval: float = WAIT_INTERVAL_S,
    on_fault: Callable[[CloneVM, DomainFault], None] | None = None,
) -> list[CloneVM]:
    """Probe the clones' VMs about every `interval` seconds until none is pending; the VMs
    still not ready after `timeout` seconds (empty: all are). Clones that are not Running
    (failed, stopped) are not waited for, nor is a VM whose domain stopped by itself (QEMU
    paused it on an error, it crashed or shut off: `Hypervisor.fault`): `on_fault` hears it
    once, and it is among the VMs returned, at once if no other VM is still booting."""
    deadline = time.monotonic() + timeout
    stopped: set[int] = set()
    while True:
        began = time.monotonic()
        probe_pass(hv, clone_ids)
        left = list(pending(clone_ids))
        for vm in left:
            fault = None if vm.pk in stopped else _fault(hv, vm.domain_name)
            if fault is not None:
                stopped.add(vm.pk)
                if on_fault is not None:
                    on_fault(vm, fault)
        now = time.monotonic()
        if all(vm.pk in stopped for vm in left) or now >= deadline:
            return left
        time.sleep(max(0.0, min(interval - (now - began), deadline - now)))


def _fault(hv: Hypervisor, domain: str) -> DomainFault | None:
    try:
        return hv.fault(domain)
    except HypervisorError:
        return None  # libvirt did not answer this time: keep waiting


def ready_text(vm: CloneVM) -> str:
    """What the dashboard shows: "ready in 8.2s (ssh)", "booting", or "" when off."""
    if vm.state != DomainState.RUNNING.value:
        return ""
    if vm.ready_at is None:
        return "booting"
    took = f" in {vm.ready_s:.1f}s" if vm.ready_s is not None else ""
    return f"ready{took} ({vm.ready_via})" if vm.ready_via else f"ready{took}"
