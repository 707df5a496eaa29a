"""Settling runs after a crash, and removing what no live target owns.

* A Running operation whose worker process is gone (or, on another host, whose heartbeat
  stopped) is Interrupted, and its kind settles the target (a build or clone is marked
  Failed with the reason).
* A Queued operation that no RQ job will ever run (Redis lost it, or refused it) is queued
  again once it has waited LOST_AFTER.
* Each app's sweep runs (jobs.registry.register_sweep: kept disks, clone states and limits).
* Domains and networks tagged with a registered owner tag whose key is not live are removed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from jobs import registry
from jobs.models import Operation, OperationStatus
from jobs.runner import reschedule, target_of
from ruddervirt.engine.cleanup import remove_domain
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.runtime import engine_config, worker_alive

log = logging.getLogger(__name__)
S = OperationStatus
STALE_AFTER = timedelta(seconds=90)
LOST_AFTER = timedelta(seconds=60)


def reconcile(hv: Hypervisor) -> list[str]:
    """The whole reconcile: runs, then each app's sweep, then leftovers; one line per action
    (logged, and printed by ``manage.py reconcile``)."""
    actions = reconcile_operations()
    for sweep in registry.sweeps():
        actions += sweep(hv)
    actions += remove_leftovers(hv, engine_config().name_prefix)
    for line in actions:
        log.info(line)
    return actions


def reconcile_operations() -> list[str]:
    """Interrupt dead runs and queue lost ones again; one line per action."""
    return settle_dead_runs() + reschedule_lost()


def dead_runs() -> list[tuple[Operation, str]]:
    now = timezone.now()
    found = []
    for op in Operation.objects.running():
        alive = worker_alive(op.worker)
        stale = op.heartbeat_at is None or now - op.heartbeat_at > STALE_AFTER
        if alive is False:
            found.append((op, f"the worker running it ({op.worker}) is gone"))
        elif alive is None and stale:
            found.append((op, f"the worker running it ({op.worker}) stopped answering"))
    return found


def settle_dead_runs() -> list[str]:
    actions = []
    for op, reason in dead_runs():
        moved = Operation.objects.filter(pk=op.pk, status=S.RUNNING, worker=op.worker).update(
            status=S.INTERRUPTED, finished_at=timezone.now(), error=f"interrupted: {reason}"
        )
        if not moved:
            continue  # it ended meanwhile
        target = target_of(op)
        line = None
        if target is not None:
            line = registry.kind(op.kind).interrupted(target, f"interrupted: {reason}")
        actions.append(line or f"{op}: interrupted ({reason})")
    return actions


def reschedule_lost() -> list[str]:
    cutoff = timezone.now() - LOST_AFTER
    actions = []
    for op in Operation.objects.filter(status=S.QUEUED, created_at__lt=cutoff):
        if op.rq_job_id and _job_waits(op):
            continue
        if reschedule(op):
            actions.append(f"{op.kind} #{op.pk}: queued again (its job was lost)")
    return actions


def _job_waits(op: Operation) -> bool:
    """Whether RQ still holds the run's job in a state that will run it."""
    import django_rq
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(op.rq_job_id, connection=django_rq.get_connection(op.queue))
        return job.get_status(refresh=False) in {"queued", "started", "deferred", "scheduled"}
    except NoSuchJobError:
        return False
    except Exception:  # Redis down: queueing again would fail the same way
        return True


def remove_leftovers(hv: Hypervisor, name_prefix: str) -> list[str]:
    """Domains and networks whose owner tag is registered and whose key is not live."""
    owners = {o.tag: o for o in registry.owners()}
    live = {tag: o.live() for tag, o in owners.items()}
    actions = []
    for domain in hv.list_domains(name_prefix):
        if _leftover(domain.metadata, owners, live):
            remove_domain(hv, domain.name)
            actions.append(f"removed leftover domain {domain.name}")
    for network in hv.list_networks(name_prefix):
        if _leftover(network.metadata, owners, live):
            if network.active:
                hv.destroy_network(network.name)
            hv.undefine_network(network.name)
            actions.append(f"removed leftover network {network.name}")
    return actions


def _leftover(meta: dict, owners: dict[str, registry.Owner], live: dict[str, set[str]]) -> bool:
    owner = owners.get(meta.get("kind", ""))
    return owner is not None and meta.get(owner.key_field) not in live[owner.tag]
