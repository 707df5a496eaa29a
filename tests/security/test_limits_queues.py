"""Long builds cannot starve clones: clone jobs go to a queue of their own, and `make run`
starts clone workers that serve only it, whatever the build workers are doing."""

from __future__ import annotations

import os
from pathlib import Path

import django_rq
import pytest
from django.conf import settings
from rq import Queue, SimpleWorker

from clones.models import Class, ClassMembership, Clone, CloneStatus
from clones.services import launch
from jobs.tasks import run_operation_job
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.serve import portal_services
from tests.clones.conftest import make_version

pytestmark = pytest.mark.django_db(transaction=True)


def worker_queues(env: dict[str, str] | None = None) -> dict[str, list[str]]:
    """The queues each kind of worker that `make run` starts (ruddervirt/serve.py) listens to."""
    found: dict[str, list[str]] = {}
    for service in portal_services(env or {}, python="python")[0]:
        if service.name.startswith("worker "):
            argv = list(service.argv)
            kind = service.name.split()[1].split("-")[0]
            found.setdefault(kind, argv[argv.index("rqworker") + 1 : argv.index("--name")])
    return found


def worker_count(env: dict[str, str], kind: str) -> int:
    names = [s.name for s in portal_services(env, python="python")[0]]
    return sum(name.startswith(f"worker {kind}-") for name in names)


@pytest.fixture
def queues(monkeypatch):
    """Queues of this test alone (other test runs share the Redis server), handed out by
    the name the code asks for."""
    connection = django_rq.get_connection("default")
    made: dict[str, Queue] = {}

    def get_queue(name: str = "default", **_kwargs) -> Queue:
        if name not in made:
            made[name] = Queue(f"{name}-test{os.getpid()}", connection=connection)
        return made[name]

    monkeypatch.setattr(django_rq, "get_queue", get_queue)
    yield get_queue
    for queue in made.values():
        queue.delete(delete_jobs=True)


@pytest.fixture
def fake_hv(monkeypatch) -> FakeHypervisor:
    hv = FakeHypervisor(name_prefix=settings.RUDDERVIRT_NAME_PREFIX)
    monkeypatch.setattr("ruddervirt.runtime._hypervisor", hv)
    return hv


@pytest.fixture
def klass(instructor, student, settings, tmp_path):
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path / "storage"
    klass = Class.objects.create(name="Networks 101", owner=instructor)
    ClassMembership.objects.create(klass=klass, student=student)
    return klass


def test_make_run_starts_build_workers_that_never_take_clone_jobs() -> None:
    workers = worker_queues()
    assert workers["build"] == ["builds"]
    assert "clones" in workers["clone"] and "builds" not in workers["clone"]


def test_make_run_reads_the_number_of_each_kind_of_worker_from_its_setting() -> None:
    assert (worker_count({}, "build"), worker_count({}, "clone")) == (2, 1)
    env = {"RUDDERVIRT_BUILD_WORKERS": "3", "RUDDERVIRT_CLONE_WORKERS": "2"}
    assert (worker_count(env, "build"), worker_count(env, "clone")) == (3, 2)


def test_a_clone_job_runs_while_every_build_worker_is_busy(
    klass, instructor, fake_hv, queues
) -> None:
    builds = queues("builds")
    for n in range(3):  # more long builds than build workers: the builds queue is backed up
        builds.enqueue(run_operation_job, 10**6 + n)
    version = make_version(instructor, Path(settings.RUDDERVIRT_STORAGE_ROOT))
    (clone,) = launch(klass, version, by=instructor)  # queued once the transaction committed
    clone_worker = SimpleWorker(
        [queues(name) for name in worker_queues()["clone"]], connection=builds.connection
    )
    clone_worker.work(burst=True)
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.RUNNING
    assert builds.count == 3  # untouched: no clone worker takes a build
    assert queues("clones").count == 0
