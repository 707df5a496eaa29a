"""Doing what clones.services decided: the body of every clone job.

`execute(clone_id, action)` runs in an RQ worker (clones.jobs) or in-process
(`run_inline`, for `launch_class --wait` on a host without workers, and for tests). It
claims the clone (so two processes never work on one clone), calls the engine, records
ports and states, and moves the clone to its resting status: Running, Stopped, or Failed
with the reason. Deleting removes the rows once the host is clean.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.db import close_old_connections, connection
from django.utils import timezone

from clones.models import Clone, CloneStatus, CloneVM
from clones.transitions import InvalidTransition, transition
from ruddervirt.engine import clone as engine
from ruddervirt.engine.clone import CloneError, CloneRequest
from ruddervirt.hypervisor.driver import DomainState, Hypervisor
from ruddervirt.runtime import engine_config, get_hypervisor, worker_identity
from ruddervirt.spec import SpecError

log = logging.getLogger(__name__)
S = CloneStatus
# The status each action's job expects to find (services moved the clone there).
EXPECTED = {
    "provision": S.PENDING,
    "start": S.STARTING,
    "stop": S.STOPPING,
    "restart": S.STOPPING,
    "reprovision": S.PROVISIONING,
    "delete": S.DELETING,
}
INLINE_WORKERS = 8


def clone_workdir(clone: Clone) -> Path:
    return engine_config().storage_root / "clones" / str(clone.pk)


def domain_for(clone: Clone, vm: str) -> str:
    return engine.domain_name(engine_config(), clone.key, vm)


def clone_request(clone: Clone) -> CloneRequest:
    """The engine's view of a clone: its version's record, pinned ports."""
    version = clone.version
    ports = {vm.name: vm.mgmt_port for vm in clone.vms.all() if vm.mgmt_port}
    return CloneRequest(
        key=clone.key,
        spec=version.version_spec,
        workdir=clone_workdir(clone),
        full_copy=clone.full_copy,
        ports=ports,
        title=f"{version} for {clone.student.get_username()}",
        tags={"class": str(clone.klass_id)},
    )


# --- entry points ----------------------------------------------------------------------
def execute(
    clone_id: int, action: str, *, vm: str | None = None, hv: Hypervisor | None = None
) -> Clone | None:
    """Do `action` on the clone (see the module docstring). Returns the clone, or None when
    it is gone (deleted). Never raises for a failure of the action itself."""
    clone = Clone.objects.select_related("version", "student", "klass").filter(pk=clone_id).first()
    if clone is None:
        return None
    if clone.status != EXPECTED[action]:
        log.warning("clone %s: %s skipped, it is %s", clone_id, action, clone.status)
        return clone
    me = worker_identity()
    if not Clone.objects.filter(pk=clone_id, worker="").update(worker=me):
        log.warning("clone %s is already being worked on", clone_id)
        return clone
    hv = hv or get_hypervisor()
    try:
        HANDLERS[action](clone, hv, vm)
    except Exception as exc:
        known = CloneError | InvalidTransition | SpecError
        reason = str(exc) if isinstance(exc, known) else _internal(exc)
        log.warning("clone %s: %s failed: %s", clone_id, action, reason)
        _fail(clone, reason, hv)
    finally:
        Clone.objects.filter(pk=clone_id, worker=me).update(worker="")
    return Clone.objects.filter(pk=clone_id).first()


def run_inline(
    clone_ids: Iterable[int],
    action: str,
    *,
    hv: Hypervisor | None = None,
    workers: int = INLINE_WORKERS,
) -> None:
    """`execute` for many clones in parallel threads of this process (no RQ worker).

    "provision" makes the clones together with ruddervirt.engine.clone.create_many (every
    clone prepared, then every one started), the fastest way to bring up a class."""
    ids = list(clone_ids)
    if action == "provision":
        provision_many(ids, hv=hv or get_hypervisor(), workers=workers)
    else:
        _parallel(ids, action, hv, workers)


def provision_many(clone_ids: list[int], *, hv: Hypervisor, workers: int = INLINE_WORKERS) -> None:
    """Provision and start the Pending clones among `clone_ids` in one batch."""
    me = worker_identity()
    claimed: list[Clone] = []
    for clone in Clone.objects.filter(pk__in=clone_ids, status=S.PENDING, worker=""):
        if not Clone.objects.filter(pk=clone.pk, worker="").update(worker=me):
            continue
        try:
            transition(clone, S.PROVISIONING)
        except InvalidTransition:
            Clone.objects.filter(pk=clone.pk, worker=me).update(worker="")
            continue
        claimed.append(clone)
    try:
        requests, ready = [], []
        for clone in claimed:
            try:
                requests.append(clone_request(clone))
                ready.append(clone)
            except Exception as exc:
                _fail(clone, str(exc) if isinstance(exc, SpecError) else _internal(exc), hv)
        results = engine.create_many(requests, hv=hv, config=engine_config(), workers=workers)
        for clone, result in zip(ready, results, strict=True):
            if isinstance(result, CloneError):
                _fail(clone, str(result), hv)
            else:
                _created(clone, result, hv)
    finally:
        Clone.objects.filter(pk__in=[c.pk for c in claimed], worker=me).update(worker="")


def _parallel(ids: list[int], action: str, hv: Hypervisor, workers: int) -> None:
    if not ids:
        return

    def one(pk: int) -> None:
        try:
            execute(pk, action, hv=hv)
        finally:
            connection.close()  # each thread has its own connection

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids)))) as pool:
        list(pool.map(one, ids))
    close_old_connections()


def _internal(exc: Exception) -> str:
    log.error("clone job crashed:\n%s", traceback.format_exc())
    return f"internal error: {exc.__class__.__name__}: {exc}"


def _fail(clone: Clone, reason: str, hv: Hypervisor) -> None:
    try:
        transition(clone, S.FAILED, error=reason)
    except InvalidTransition:
        return  # deleted or moved meanwhile
    try:
        record_states(clone, hv)
    except Exception:  # the hypervisor itself may be what failed
        log.exception("clone %s: cannot read the VMs' states", clone.pk)


# --- handlers --------------------------------------------------------------------------
def _provision(clone: Clone, hv: Hypervisor, _vm: str | None) -> None:
    transition(clone, S.PROVISIONING)
    _create(clone, hv)


def _reprovision(clone: Clone, hv: Hypervisor, _vm: str | None) -> None:
    engine.remove_clone(clone.key, clone_workdir(clone), hv=hv, config=engine_config())
    Clone.objects.filter(pk=clone.pk).update(reprovisions=clone.reprovisions + 1)
    _create(clone, hv)


def _create(clone: Clone, hv: Hypervisor) -> None:
    result = engine.create_clone(clone_request(clone), hv=hv, config=engine_config())
    _created(clone, result, hv)


def _created(clone: Clone, result: engine.CloneResult, hv: Hypervisor) -> None:
    """Record a freshly made (and started) clone and call it Running."""
    for vm in result.vms:
        CloneVM.objects.filter(clone=clone, name=vm.name).update(
            domain_name=vm.domain,
            mgmt_port=vm.mgmt_port,
            disks=[str(p) for p in vm.disks],
            nics=[n.to_dict() for n in vm.nics],
        )
    record_states(clone, hv)
    note = "; ".join(result.warnings)[:300]
    transition(clone, S.RUNNING, note=note, last_activity_at=timezone.now())


def _start(clone: Clone, hv: Hypervisor, vm: str | None) -> None:
    req = clone_request(clone)
    ports = engine.start_clone(
        req, hv=hv, config=engine_config(), ports=req.ports, vms=[vm] if vm else None
    )
    for name, port in ports.items():
        CloneVM.objects.filter(clone=clone, name=name).update(mgmt_port=port)
    record_states(clone, hv)
    transition(clone, S.RUNNING, last_activity_at=timezone.now())


def _stop(clone: Clone, hv: Hypervisor, vm: str | None) -> None:
    _power_off(clone, hv, vm)
    states = record_states(clone, hv)
    running = any(s == DomainState.RUNNING for s in states.values())
    transition(clone, S.RUNNING if running else S.STOPPED)


def _restart(clone: Clone, hv: Hypervisor, vm: str | None) -> None:
    _power_off(clone, hv, vm)
    transition(clone, S.STARTING)
    _start(clone, hv, vm)


def _power_off(clone: Clone, hv: Hypervisor, vm: str | None) -> None:
    domains = [v.domain_name for v in clone.vms.all() if vm is None or v.name == vm]
    engine.stop_clone(hv, domains, timeout=engine_config().acpi_timeout_s)


def _delete(clone: Clone, hv: Hypervisor, _vm: str | None) -> None:
    # Without the version's record: a clone whose version cannot be read goes too.
    engine.remove_clone(clone.key, clone_workdir(clone), hv=hv, config=engine_config())
    Clone.objects.filter(pk=clone.pk).delete()


HANDLERS = {
    "provision": _provision,
    "reprovision": _reprovision,
    "start": _start,
    "stop": _stop,
    "restart": _restart,
    "delete": _delete,
}


def record_states(clone: Clone, hv: Hypervisor) -> dict[str, DomainState]:
    """Ask libvirt for each VM's state and store it; returns them by VM name."""
    states = {}
    for vm in CloneVM.objects.filter(clone_id=clone.pk):
        state = hv.state(vm.domain_name)
        states[vm.name] = state
        if vm.state != state.value:
            CloneVM.objects.filter(pk=vm.pk).update(state=state.value)
    return states
