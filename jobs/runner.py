"""The one way a job runs: submit, queue, claim, heartbeat, finish, reschedule.

``submit`` records an Operation for a target and, once the caller's transaction commits,
queues it on its kind's RQ queue (jobs.tasks). A worker, or a command running the job in
its own process (``run`` / ``run_many``), claims it: the move from Queued to Running is a
conditional UPDATE, and the database's one-running-operation-per-target constraint keeps two
runs off one target. While the handler works a heartbeat thread stamps the row, so the
reconcile (jobs.reconcile) can tell a dead or hung worker from a slow job. The end is
recorded once: Succeeded, Failed with the error, or Skipped when the target had moved on.
A run that could not be queued, or whose RQ job was lost, is queued again by ``reschedule``.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, close_old_connections, connection, models, transaction
from django.utils import timezone

from jobs import registry
from jobs.models import Operation, OperationStatus
from jobs.registry import Result
from ruddervirt.runtime import worker_identity

log = logging.getLogger(__name__)
S = OperationStatus
# RQ imports the entry point by name, so jobs.runner and jobs.tasks do not import each other.
TASK = "jobs.tasks.run_operation_job"
DEFAULT_HEARTBEAT_S = 15.0


# --- queueing --------------------------------------------------------------------------
def content_type_of(target: models.Model) -> ContentType:
    """The ContentType row of `target`'s model, read from the database, not from Django's
    per-process cache: a long-lived process (daphne, a worker) keeps that cache for its whole
    life, and once the table is emptied and refilled under it (`manage.py flush`, the suite's
    transactional tests beside a live portal) its ids are stale and every new Operation
    would break the foreign key. One small query per submitted job."""
    meta = target._meta.concrete_model._meta
    return ContentType.objects.get(app_label=meta.app_label, model=meta.model_name)


def submit(
    kind: str,
    target: models.Model,
    *,
    args: dict | None = None,
    by=None,
    queue: bool = True,
) -> Operation:
    """Record a run of `kind` on `target`; with `queue`, hand it to the workers when the
    current transaction commits (without, the caller runs it: ``run``)."""
    spec = registry.kind(kind)
    op = Operation.objects.create(
        kind=kind,
        target_type=content_type_of(target),
        target_id=target.pk,
        args=args or {},
        requested_by=by if getattr(by, "pk", None) else None,
        queue=spec.queue,
    )
    if queue:
        transaction.on_commit(lambda: enqueue(op.pk))
    return op


def open_run(
    kind: str, target: models.Model, *, args: dict | None = None, by=None
) -> Operation | None:
    """The run to do now, in this process: the target's Queued run of `kind` (services queued
    it; this process takes it before a worker does), else a new one; None while another run
    of the target is Running."""
    runs = Operation.objects.for_target(target)
    op = runs.filter(kind=kind, status=S.QUEUED).first()
    if op is None and not runs.running().exists():
        op = submit(kind, target, args=args, by=by, queue=False)
    return op


def enqueue(op_id: int) -> bool:
    """Put the run on its RQ queue. When Redis refuses, the kind decides (``unqueued``):
    the run fails with the reason, or stays Queued for ``reschedule``."""
    import django_rq

    op = Operation.objects.get(pk=op_id)
    spec = registry.kind(op.kind)
    target = target_of(op)
    if target is None:
        _end(op, Result(outcome="gone", skipped=True), only_from=S.QUEUED)
        return False
    try:
        job = django_rq.get_queue(op.queue).enqueue(TASK, op.pk, job_timeout=spec.timeout_s(target))
    except Exception as exc:
        log.exception("%s: cannot queue %s", op, op.kind)
        reason = f"could not queue the {spec.title}: {exc}"
        if spec.unqueued is None:
            Operation.objects.filter(pk=op.pk).update(error=reason)
        else:
            _end(op, Result(error=reason), only_from=S.QUEUED)
            spec.unqueued(target, reason)
        return False
    Operation.objects.filter(pk=op.pk).update(rq_job_id=job.id, error="")
    return True


def reschedule(op: Operation) -> bool:
    """Queue a Queued run again (its RQ job was lost, or Redis refused it)."""
    if op.status != S.QUEUED:
        return False
    return enqueue(op.pk)


# --- running ---------------------------------------------------------------------------
def target_of(op: Operation) -> models.Model | None:
    model = registry.kind(op.kind).model
    return model.objects.filter(pk=op.target_id).first()


def claim(op_id: int) -> Operation | None:
    """Queued -> Running for this process, or None when another process has it (or another
    run holds its target: that one stays Queued, for ``reschedule``)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            moved = Operation.objects.filter(pk=op_id, status=S.QUEUED).update(
                status=S.RUNNING, worker=worker_identity(), started_at=now, heartbeat_at=now
            )
    except IntegrityError:
        log.warning("operation %s: its target is busy with another run", op_id)
        return None
    return Operation.objects.get(pk=op_id) if moved else None


def run(op_id: int, *, hv=None, echo: Callable[[str], None] | None = None) -> Operation:
    """Claim the run and do it to its end (the RQ job's body, or a command's own run).
    Returns the operation as it ended, or as found when someone else has it."""
    op = claim(op_id)
    if op is None:
        return Operation.objects.get(pk=op_id)
    target = target_of(op)
    if target is None:
        return _end(op, Result(outcome="gone", skipped=True))
    spec = registry.kind(op.kind)
    with Heartbeat(op):
        result = _guarded(lambda: spec.run(op, target, hv=hv, echo=echo), op)
    return _end(op, result)


def run_many(op_ids: Iterable[int], *, hv=None, workers: int = 8) -> None:
    """Run queued operations in this process: a kind with a batch handler gets every claimed
    run of its kind in one call (a class's clones), the others run in parallel threads."""
    ids = list(op_ids)
    kind_of = dict(Operation.objects.filter(pk__in=ids).values_list("pk", "kind"))
    kinds: dict[str, list[int]] = {}
    for pk in ids:  # in the caller's order (a class's clones by student)
        if pk in kind_of:
            kinds.setdefault(kind_of[pk], []).append(pk)
    for name, group in kinds.items():
        spec = registry.kind(name)
        if spec.batch is not None:
            _run_batch(spec, group, hv=hv, workers=workers)
        else:
            _run_parallel(group, hv=hv, workers=workers)


def _run_batch(spec: registry.Kind, ids: list[int], *, hv, workers: int) -> None:
    claimed = [op for op in (claim(pk) for pk in ids) if op is not None]
    pairs, ended = [], []
    for op in claimed:
        target = target_of(op)
        if target is None:
            ended.append(_end(op, Result(outcome="gone", skipped=True)))
        else:
            pairs.append((op, target))
    if not pairs:
        return
    with Heartbeat(*[op for op, _ in pairs]):
        try:
            results = spec.batch(pairs, hv=hv, workers=workers)
        except Exception as exc:
            results = [_internal(op, exc) for op, _ in pairs]
    for (op, _), result in zip(pairs, results, strict=True):
        _end(op, result)


def _run_parallel(ids: list[int], *, hv, workers: int) -> None:
    def one(pk: int) -> None:
        try:
            run(pk, hv=hv)
        finally:
            connection.close()  # each thread has its own connection

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids)))) as pool:
        list(pool.map(one, ids))
    close_old_connections()


def _guarded(call: Callable[[], Result], op: Operation) -> Result:
    try:
        return call()
    except Exception as exc:
        return _internal(op, exc)


def _internal(op: Operation, exc: Exception) -> Result:
    log.error("%s crashed:\n%s", op, traceback.format_exc())
    return Result(error=f"internal error: {exc.__class__.__name__}: {exc}")


def _end(op: Operation, result: Result, *, only_from: str = S.RUNNING) -> Operation:
    """Record the end once (a run the reconcile already called Interrupted stays so)."""
    status = S.SKIPPED if result.skipped else S.FAILED if result.error else S.SUCCEEDED
    Operation.objects.filter(pk=op.pk, status=only_from).update(
        status=status,
        finished_at=timezone.now(),
        outcome=result.outcome[:40],
        error=result.error,
    )
    return Operation.objects.get(pk=op.pk)


# --- heartbeat -------------------------------------------------------------------------
def heartbeat_interval() -> float:
    return float(getattr(settings, "RUDDERVIRT_HEARTBEAT_S", DEFAULT_HEARTBEAT_S))


class Heartbeat:
    """Stamps the runs' heartbeat every RUDDERVIRT_HEARTBEAT_S seconds from a thread, while
    the ``with`` block runs (a handbuild step may wait for hours: the run stays alive)."""

    def __init__(self, *ops: Operation) -> None:
        self.ids = [op.pk for op in ops]
        self.every = heartbeat_interval()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _beat(self) -> None:
        try:
            while not self.stop.wait(self.every):
                try:
                    Operation.objects.filter(pk__in=self.ids, status=S.RUNNING).update(
                        heartbeat_at=timezone.now()
                    )
                except Exception:  # a locked or lost database: try again next beat
                    log.warning("heartbeat of %s failed", self.ids, exc_info=True)
        finally:
            connection.close()
