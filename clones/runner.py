"""Doing what clones.services decided: the body of every clone job.

Every clone action is a job of the one runner (jobs.runner), of kind "clone.<action>":
`run_action` is its body, in an RQ worker or, through `execute` / `run_inline`, in this
process (`launch_class --wait` on a host without workers, and tests); "provision" has a
batch body (`provision_batch`) that makes a class's clones together. The runner's claim
keeps two processes off one clone; the body calls the engine, records ports and states,
and moves the clone to its resting status: Running, Stopped, or Failed with the reason.
Deleting removes the rows once the host is clean.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Iterable
from pathlib import Path

from django.utils import timezone

import jobs.runner as jobs
from clones import readiness, warm
from clones.jobs import KIND_PREFIX, kind_name
from clones.models import BUSY, Clone, CloneStatus, CloneVM, StartMode
from clones.transitions import InvalidTransition, transition
from jobs.models import Operation
from jobs.registry import Result
from ruddervirt.engine import clone as engine
from ruddervirt.engine.clone import CloneError, CloneRequest
from ruddervirt.hypervisor.driver import DomainState, Hypervisor
from ruddervirt.runtime import engine_config, get_hypervisor
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
    """The engine's view of a clone: its version's record, pinned ports, and the version's
    warm image when the clone was launched warm and there is one (a cold boot otherwise)."""
    version = clone.version
    ports = {vm.name: vm.mgmt_port for vm in clone.vms.all() if vm.mgmt_port}
    image = warm.ready_image(version) if clone.start_mode == StartMode.WARM else None
    return CloneRequest(
        warm=warm.source_of(image) if image is not None and not clone.full_copy else None,
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
    """Do `action` on the clone now, in this process, through the one runner (its queued
    operation when services queued one; a new one otherwise). Returns the clone, or None
    when it is gone (deleted). Never raises for a failure of the action itself."""
    clone = Clone.objects.filter(pk=clone_id).first()
    if clone is None:
        return None
    op = _open_operation(clone, action, vm)
    if op is None:
        log.warning("clone %s is already being worked on", clone_id)
    else:
        jobs.run(op.pk, hv=hv)
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
    ops = [_open_operation(c, action, None) for c in Clone.objects.filter(pk__in=list(clone_ids))]
    ids = [op.pk for op in ops if op is not None]
    if ids:
        jobs.run_many(ids, hv=hv or get_hypervisor(), workers=workers)


def _open_operation(clone: Clone, action: str, vm: str | None) -> Operation | None:
    """The clone's queued run of `action`, or a new one; None while another run has it."""
    return jobs.open_run(kind_name(action), clone, args={"vm": vm} if vm else {})


# --- the jobs (jobs.runner calls them with the claimed operations) ---------------------
def run_action(op: Operation, clone: Clone, *, hv: Hypervisor | None = None, echo=None) -> Result:
    """The job of every "clone.<action>" kind: the action's handler, and the clone's end."""
    action = op.kind.removeprefix(KIND_PREFIX)
    clone = Clone.objects.select_related("version", "student", "klass").get(pk=clone.pk)
    if clone.status != EXPECTED[action]:
        log.warning("clone %s: %s skipped, it is %s", clone.pk, action, clone.status)
        return Result(outcome=clone.status, skipped=True)
    hv = hv or get_hypervisor()
    try:
        HANDLERS[action](clone, hv, op.args.get("vm"))
    except Exception as exc:
        known = CloneError | InvalidTransition | SpecError
        reason = str(exc) if isinstance(exc, known) else _internal(exc)
        log.warning("clone %s: %s failed: %s", clone.pk, action, reason)
        _fail(clone, reason, hv)
    return _result(clone.pk)


def provision_batch(
    pairs: list[tuple[Operation, Clone]], *, hv: Hypervisor | None = None, workers: int = 8
) -> list[Result]:
    """The batch job of "clone.provision": the Pending clones made together, then started."""
    hv = hv or get_hypervisor()
    skipped: dict[int, Result] = {}
    requests, ready = [], []
    for _op, clone in pairs:
        try:
            transition(clone, S.PROVISIONING, only_from=(S.PENDING,))
        except InvalidTransition as exc:
            skipped[clone.pk] = Result(outcome=exc.current or "", skipped=True)
            continue
        try:
            requests.append(clone_request(clone))
            ready.append(clone)
        except Exception as exc:
            _fail(clone, str(exc) if isinstance(exc, SpecError) else _internal(exc), hv)
    results = engine.create_many(requests, hv=hv, config=engine_config(), workers=workers)
    for clone, req, result in zip(ready, requests, results, strict=True):
        try:
            if isinstance(result, CloneError):
                _fail(clone, str(result), hv)
            else:
                _created(clone, req, result, hv)
        except Exception as exc:
            _fail(clone, _internal(exc), hv)
    return [skipped.get(clone.pk) or _result(clone.pk) for _op, clone in pairs]


def _result(clone_id: int) -> Result:
    """A clone that ended Failed is a run that failed, with the clone's reason."""
    clone = Clone.objects.filter(pk=clone_id).first()
    if clone is None:
        return Result(outcome="Deleted")
    return Result(outcome=clone.status, error=clone.error if clone.status == S.FAILED else "")


def interrupted(clone: Clone, reason: str) -> str | None:
    """A clone whose worker died mid-job: Failed with the reason (jobs.reconcile)."""
    try:
        transition(clone, S.FAILED, error=reason, only_from=BUSY)
    except InvalidTransition:
        return None
    return f"clone {clone.pk}: marked failed ({reason})"


def unqueued(clone: Clone, reason: str) -> None:
    """A clone whose job cannot be queued (Redis down) fails with the reason instead of
    waiting for nothing."""
    with contextlib.suppress(InvalidTransition):  # moved meanwhile: nothing to say
        transition(clone, S.FAILED, error=reason)


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
    Clone.objects.filter(pk=clone.pk).update(reprovisions=clone.reprovisions + 1, warm_image=None)
    _create(clone, hv)


def _create(clone: Clone, hv: Hypervisor) -> None:
    """Make and start one clone, the way a class's are (warm or cold)."""
    req = clone_request(clone)
    (result,) = engine.create_many([req], hv=hv, config=engine_config(), workers=1)
    if isinstance(result, CloneError):
        raise result
    _created(clone, req, result, hv)


NO_WARM_IMAGE = "booted cold: the version has no warm image"


def _created(clone: Clone, req: CloneRequest, result: engine.CloneResult, hv: Hypervisor) -> None:
    """Record a freshly made (and started) clone and call it Running."""
    asked_warm = clone.start_mode == StartMode.WARM
    for vm in result.vms:
        note = vm.note or (NO_WARM_IMAGE if asked_warm and req.warm is None else "")
        CloneVM.objects.filter(clone=clone, name=vm.name).update(
            domain_name=vm.domain,
            mgmt_port=vm.mgmt_port,
            disks=[str(p) for p in vm.disks],
            nics=[n.to_dict() for n in vm.nics],
            started_via=vm.start,
            start_note=note,
        )
        readiness.mark_started(clone.pk, [vm.name], at=vm.started_at)
    on_image = req.warm is not None and any(vm.start == "warm" for vm in result.vms)
    image = warm.ready_image(clone.version) if on_image else None
    Clone.objects.filter(pk=clone.pk).update(warm_image=image)
    record_states(clone, hv)
    note = "; ".join(result.warnings)[:300]
    transition(clone, S.RUNNING, note=note, last_activity_at=timezone.now())


def _start(clone: Clone, hv: Hypervisor, vm: str | None) -> None:
    req = clone_request(clone)
    booting = readiness.off_vms(clone.pk, hv, vm)
    ports = engine.start_clone(
        req, hv=hv, config=engine_config(), ports=req.ports, vms=[vm] if vm else None
    )
    readiness.mark_started(clone.pk, booting)
    for name, port in ports.items():
        CloneVM.objects.filter(clone=clone, name=name).update(mgmt_port=port)
    CloneVM.objects.filter(clone=clone, name__in=booting).update(started_via="cold", start_note="")
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
    readiness.clear(clone.pk, vm)


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
