"""The one runner: queueing, the claim, the heartbeat, how a run ends, and the reconcile of
runs whose worker died. A test kind runs on a Module row, so nothing here is a build's or a
clone's logic (tests/builds and tests/clones cover those kinds)."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from jobs import registry, runner
from jobs.models import Operation
from jobs.reconcile import reconcile_operations
from jobs.registry import Kind, Result
from modules.models import Module

pytestmark = pytest.mark.django_db(transaction=True)
KIND = "test.job"


class Calls:
    """The test kind's handler and hooks, recording what the runner asked of them."""

    def __init__(self) -> None:
        self.result = Result(outcome="Done")
        self.raises: Exception | None = None
        self.during = None  # called inside the run, with the operation
        self.ran: list[int] = []
        self.batches: list[list[int]] = []
        self.interrupted: list[tuple[int, str]] = []
        self.unqueued: list[tuple[int, str]] = []

    def run(self, op, target, hv=None, echo=None) -> Result:
        self.ran.append(op.pk)
        if self.during:
            self.during(op)
        if self.raises:
            raise self.raises
        return self.result

    def batch(self, pairs, hv=None, workers=8) -> list[Result]:
        self.batches.append([op.pk for op, _ in pairs])
        return [Result(outcome=f"batched {target.name}") for _, target in pairs]


def kind_for(calls: Calls, **extra) -> Kind:
    return Kind(
        name=KIND,
        model=Module,
        queue="default",
        run=calls.run,
        timeout_s=lambda target: 60,
        interrupted=lambda target, why: calls.interrupted.append((target.pk, why)) or None,
        **extra,
    )


@pytest.fixture
def calls():
    made = Calls()
    registry.register(kind_for(made))
    yield made
    registry._kinds.pop(KIND, None)


@pytest.fixture
def module(instructor) -> Module:
    return Module.objects.create(name="target", owner=instructor)


def status(op: Operation) -> str:
    return Operation.objects.get(pk=op.pk).status


def test_a_run_is_claimed_by_this_process_and_ends_with_its_outcome(calls, module, instructor):
    op = runner.submit(KIND, module, by=instructor, queue=False)
    assert (op.status, op.requested_by, op.queue) == ("Queued", instructor, "default")
    ended = runner.run(op.pk)
    assert calls.ran == [op.pk]
    assert (ended.status, ended.outcome, ended.error) == ("Succeeded", "Done", "")
    assert ended.worker.startswith(f"{socket.gethostname()}:")
    assert ended.started_at <= ended.heartbeat_at <= ended.finished_at
    assert ended.duration_s is not None and ended.waited_s is not None


def test_a_second_claim_of_the_same_run_gets_nothing_and_runs_nothing(calls, module):
    op = runner.submit(KIND, module, queue=False)
    assert runner.claim(op.pk) is not None
    assert runner.claim(op.pk) is None
    assert runner.run(op.pk).status == "Running"  # as the first claimant left it
    assert calls.ran == []


def test_two_runs_on_one_target_never_run_at_once(calls, module):
    first = runner.submit(KIND, module, queue=False)
    second = runner.submit(KIND, module, queue=False)
    assert runner.claim(first.pk) is not None
    assert runner.claim(second.pk) is None
    assert status(second) == "Queued"  # left for the reconcile to queue again
    with pytest.raises(IntegrityError), transaction.atomic():
        Operation.objects.filter(pk=second.pk).update(status="Running")


def test_a_handler_that_fails_fails_the_run_with_its_reason(calls, module):
    calls.result = Result(outcome="Failed", error="step 2 (shell) exited 3")
    op = runner.run(runner.submit(KIND, module, queue=False).pk)
    assert (op.status, op.outcome, op.error) == ("Failed", "Failed", "step 2 (shell) exited 3")


def test_a_handler_that_raises_is_an_internal_error_not_a_lost_run(calls, module):
    calls.raises = RuntimeError("libvirt went away")
    op = runner.run(runner.submit(KIND, module, queue=False).pk)
    assert op.status == "Failed"
    assert op.error == "internal error: RuntimeError: libvirt went away"


def test_a_run_whose_target_was_deleted_is_skipped(calls, module):
    op = runner.submit(KIND, module, queue=False)
    Module.objects.filter(pk=module.pk).delete()
    ended = runner.run(op.pk)
    assert (ended.status, ended.outcome) == ("Skipped", "gone")
    assert calls.ran == []


def test_the_heartbeat_beats_while_the_handler_works(calls, module, settings):
    settings.RUDDERVIRT_HEARTBEAT_S = 0.05
    beats = []

    def watch(op):
        for _ in range(6):
            time.sleep(0.06)
            beats.append(Operation.objects.get(pk=op.pk).heartbeat_at)

    calls.during = watch
    op = runner.run(runner.submit(KIND, module, queue=False).pk)
    assert op.status == "Succeeded"
    assert len(set(beats)) >= 2 and beats[-1] > op.started_at


def test_a_run_the_reconcile_interrupted_meanwhile_stays_interrupted(calls, module):
    def reconciled(op):
        Operation.objects.filter(pk=op.pk).update(status="Interrupted")

    calls.during = reconciled
    op = runner.run(runner.submit(KIND, module, queue=False).pk)
    assert op.status == "Interrupted"


def test_queueing_when_redis_refuses_leaves_the_run_queued_with_the_reason(
    calls, module, monkeypatch
):
    import django_rq

    def refuse(name):
        raise ConnectionError("Redis is down")

    monkeypatch.setattr(django_rq, "get_queue", refuse)
    op = runner.submit(KIND, module, queue=False)
    assert runner.enqueue(op.pk) is False
    op.refresh_from_db()
    assert op.status == "Queued" and "Redis is down" in op.error


def test_a_kind_that_fails_unqueued_runs_is_told_why(calls, module, monkeypatch):
    import django_rq

    told = []
    registry.register(kind_for(calls, unqueued=lambda target, why: told.append(why)))
    monkeypatch.setattr(django_rq, "get_queue", lambda name: (_ for _ in ()).throw(OSError("no")))
    op = runner.submit(KIND, module, queue=False)
    runner.enqueue(op.pk)
    assert status(op) == "Failed"
    assert told == [f"could not queue the {KIND}: no"]


def test_submit_queues_on_commit_and_records_the_rq_job(calls, module, monkeypatch):
    import django_rq

    queued = []

    class Queue:
        def enqueue(self, func, *args, job_timeout):
            queued.append((func, args, job_timeout))
            return type("Job", (), {"id": "rq-1"})()

    monkeypatch.setattr(django_rq, "get_queue", lambda name: Queue())
    with transaction.atomic():
        op = runner.submit(KIND, module)
        assert queued == []  # nothing reaches a worker before the row is committed
    assert queued == [("jobs.tasks.run_operation_job", (op.pk,), 60)]
    assert Operation.objects.get(pk=op.pk).rq_job_id == "rq-1"


def test_the_rq_entry_point_runs_the_operation(calls, module):
    from jobs.tasks import run_operation_job

    op = runner.submit(KIND, module, queue=False)
    assert run_operation_job(op.pk) == "Succeeded"
    assert calls.ran == [op.pk]


def test_run_many_gives_a_batch_kind_every_claimed_run_at_once(module, instructor):
    calls = Calls()
    registry.register(kind_for(calls, batch=calls.batch))
    try:
        other = Module.objects.create(name="other", owner=instructor)
        ops = [runner.submit(KIND, m, queue=False) for m in (module, other)]
        runner.run_many([op.pk for op in ops])
        assert calls.batches == [[op.pk for op in ops]]
        assert [Operation.objects.get(pk=op.pk).outcome for op in ops] == [
            "batched target",
            "batched other",
        ]
    finally:
        registry._kinds.pop(KIND, None)


def test_run_many_runs_other_kinds_in_parallel(calls, module, instructor):
    entered, release = threading.Barrier(2, timeout=10), threading.Event()

    def together(op):
        entered.wait()  # both runs are inside their handler at the same time
        release.set()

    calls.during = together
    other = Module.objects.create(name="other", owner=instructor)
    ops = [runner.submit(KIND, m, queue=False) for m in (module, other)]
    runner.run_many([op.pk for op in ops], workers=2)
    assert release.is_set()
    assert {status(op) for op in ops} == {"Succeeded"}


def running(op: Operation, worker: str, beat_ago: float | None) -> None:
    beat = None if beat_ago is None else timezone.now() - timedelta(seconds=beat_ago)
    Operation.objects.filter(pk=op.pk).update(
        status="Running", worker=worker, started_at=timezone.now(), heartbeat_at=beat
    )


def test_the_reconcile_interrupts_a_run_whose_worker_process_is_gone(calls, module):
    op = runner.submit(KIND, module, queue=False)
    dead = f"{socket.gethostname()}:999999999"
    running(op, dead, beat_ago=1)
    lines = reconcile_operations()
    op.refresh_from_db()
    assert op.status == "Interrupted" and op.finished_at is not None
    assert op.error == f"interrupted: the worker running it ({dead}) is gone"
    assert calls.interrupted == [(module.pk, op.error)]
    # the kind said nothing, so the reconcile reports the run as it found it
    assert lines == [f"{KIND} #{op.pk} (Running): interrupted ({op.error[13:]})"]


def test_a_run_elsewhere_is_interrupted_only_when_its_heartbeat_stopped(calls, module, instructor):
    other = Module.objects.create(name="other", owner=instructor)
    beating, silent = (runner.submit(KIND, m, queue=False) for m in (module, other))
    running(beating, "elsewhere:42", beat_ago=5)
    running(silent, "elsewhere:43", beat_ago=600)
    reconcile_operations()
    assert status(beating) == "Running"
    assert status(silent) == "Interrupted"
    why = "interrupted: the worker running it (elsewhere:43) stopped answering"
    assert calls.interrupted == [(other.pk, why)]


def test_a_live_local_worker_keeps_its_run(calls, module):
    import os

    op = runner.submit(KIND, module, queue=False)
    running(op, f"{socket.gethostname()}:{os.getpid()}", beat_ago=600)
    assert reconcile_operations() == []
    assert status(op) == "Running"


def test_a_queued_run_whose_job_was_lost_is_queued_again(calls, module, monkeypatch):
    queued = []
    monkeypatch.setattr(runner, "enqueue", lambda pk: queued.append(pk) or True)
    fresh = runner.submit(KIND, module, queue=False)
    lost = runner.submit(KIND, module, queue=False)
    Operation.objects.filter(pk=lost.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    lines = reconcile_operations()
    assert queued == [lost.pk]  # the fresh one may still be on its way to Redis
    assert lines == [f"{KIND} #{lost.pk}: queued again (its job was lost)"]
    assert fresh.pk not in queued


def test_open_run_takes_the_queued_run_makes_one_when_none_and_none_while_one_runs(calls, module):
    queued = runner.submit(KIND, module, queue=False)
    assert runner.open_run(KIND, module) == queued  # taken before a worker gets to it
    runner.claim(queued.pk)
    assert runner.open_run(KIND, module) is None  # another process has the target
    runner._end(queued, Result(outcome="Done"))
    made = runner.open_run(KIND, module, args={"vm": "web"})
    assert made is not None and made != queued
    assert (made.status, made.args) == ("Queued", {"vm": "web"})
