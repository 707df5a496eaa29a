"""A build's status history, written by the real services and shown on the build page."""

from __future__ import annotations

import pytest

from builds import runner
from builds.models import Build, BuildStatus, BuildStatusChange
from builds.runner import execute_build
from builds.services import request_cancel, start_build
from modules.services import create_module
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.hypervisor.fake import FakeHypervisor
from tests.helpers import client_for

pytestmark = pytest.mark.django_db
S = BuildStatus


@pytest.fixture
def build(instructor, good_manifest, settings, tmp_path):
    settings.RUDDERVIRT_STORAGE_ROOT = str(tmp_path)
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    return start_build(module=module, user=instructor, queue=False)


def history(build) -> list[tuple[str, str, object, str]]:
    rows = BuildStatusChange.objects.filter(subject=build)
    return [(r.from_status, r.to_status, r.by, r.why) for r in rows]


def run_failing(build, monkeypatch, exc: Exception):
    def run_build(plan, ctx):
        raise exc

    monkeypatch.setattr(runner, "run_build", run_build)
    return execute_build(build.pk, hypervisor=FakeHypervisor(name_prefix="rvt-hist-"))


def test_cancelling_a_queued_build_records_who_cancelled_it(build, instructor):
    request_cancel(build, user=instructor)
    assert history(build) == [
        ("", S.PENDING, instructor, f"requested by {instructor}"),
        (S.PENDING, S.CANCELLED, instructor, f"cancelled by {instructor} before it started"),
    ]


def test_a_failing_build_records_the_error_as_the_reason(build, monkeypatch):
    done = run_failing(build, monkeypatch, BuildError("VM web: the disk is gone"))
    assert done.status == S.FAILED
    assert history(build)[-1] == (S.PENDING, S.FAILED, None, "VM web: the disk is gone")


def test_a_cancel_the_worker_notices_records_the_cancel_request(build, monkeypatch):
    Build.objects.filter(pk=build.pk).update(cancel_requested=True)
    done = run_failing(build, monkeypatch, BuildCancelled("cancelled"))
    assert done.status == S.CANCELLED
    assert history(build)[-1] == (S.PENDING, S.CANCELLED, None, "cancel requested: cancelled")


def test_recovery_records_why_it_failed_a_build_whose_worker_died(build, monkeypatch):
    from jobs import reconcile
    from jobs.models import Operation

    Build.objects.filter(pk=build.pk).update(status=S.BUILDING)
    Operation.objects.for_target(build).update(status="Running", worker="host:1")
    monkeypatch.setattr(reconcile, "worker_alive", lambda worker: False)
    reconcile.reconcile(FakeHypervisor(name_prefix="rvt-hist-"))
    reason = "interrupted: the worker running it (host:1) is gone"
    assert history(build)[-1] == (S.BUILDING, S.FAILED, None, reason)


def test_the_build_page_shows_the_history(build, instructor):
    request_cancel(build, user=instructor)
    page = client_for(instructor).get(f"/builds/{build.pk}/").content.decode()
    assert '<section class="card" id="history">' in page
    assert 'data-history-status="Cancelled"' in page
    assert f"cancelled by {instructor} before it started" in page


def test_the_build_page_lists_its_runs_with_how_they_ended(build, instructor, monkeypatch):
    run_failing(build, monkeypatch, BuildError("step 1 (shell) exited 2"))
    page = client_for(instructor).get(f"/builds/{build.pk}/").content.decode()
    assert '<section class="card" id="runs">' in page
    assert 'data-run-kind="build" data-run-status="Failed"' in page
    assert "step 1 (shell) exited 2" in page and str(instructor) in page


def test_the_runner_scopes_the_step_cache_to_the_instructor_who_asked(build, monkeypatch):
    seen = []

    def run_build(plan, ctx):
        seen.append(plan.cache_scope)
        raise BuildError("stop here")

    monkeypatch.setattr(runner, "run_build", run_build)
    execute_build(build.pk, hypervisor=FakeHypervisor(name_prefix="rvt-hist-"))
    assert seen and set(seen) == {f"user-{build.requested_by_id}"}
