"""A failed VM kept running for inspection (builds.kept): what the build records, the page
and its console, Clean up now, capacity, the sweep's expiry, a crashed worker, a resume.
The engine is a stand-in that leaves a running domain tagged as the real one does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from builds import admission, kept, runner
from builds import consoles as build_consoles
from builds.models import Build, BuildStatus, BuildVM
from builds.recovery import live_build_keys
from builds.services import BuildNotAllowed, clean_up_kept_vm, resume_build, start_build
from jobs import reconcile
from modules.services import create_module
from ruddervirt import capacity
from ruddervirt.engine.cleanup import remove_owned
from ruddervirt.engine.errors import BuildError
from ruddervirt.engine.phases import BuildPhase
from ruddervirt.hypervisor.driver import DomainState
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.specs import DomainSpec, NetworkSpec
from tests.helpers import client_for

pytestmark = pytest.mark.django_db
MEMORY = 256 * 2**20


@pytest.fixture
def hv(settings, monkeypatch, tmp_path) -> FakeHypervisor:
    settings.RUDDERVIRT_STORAGE_ROOT = str(tmp_path)
    fake = FakeHypervisor(name_prefix=settings.RUDDERVIRT_NAME_PREFIX)
    monkeypatch.setattr("builds.services.get_hypervisor", lambda: fake)
    return fake


@pytest.fixture
def engine(hv, monkeypatch, settings) -> list:
    """The engine stand-in: VM web fails; when the plan says keep, its domain stays running
    with the build's network (as engine.build leaves it)."""
    plans: list = []

    def run_build(plan, ctx):
        plans.append(plan)
        ctx.reporter.build_phase(BuildPhase.NETWORKING)
        prefix = settings.RUDDERVIRT_NAME_PREFIX
        owner = {"kind": "build", "build": plan.key}
        hv.define_network(
            NetworkSpec(name=f"{prefix}{plan.key}-lan", bridge="rvtk", metadata=owner)
        )
        name = f"{prefix}{plan.key}-web"
        hv.define(
            DomainSpec(
                name=name, vcpus=1, memory_bytes=MEMORY, domain_type="qemu",
                metadata={**owner, "vm": "web"},
            )
        )  # fmt: skip
        hv.start(name)
        if not plan.keep_failed_vm:
            remove_owned(hv, prefix, owner)
        raise BuildError("VM web: step 3/3 (check) failed: the script exited with code 7")

    monkeypatch.setattr(runner, "run_build", run_build)
    return plans


MANIFEST = """\
retries: 0
vms:
  - name: web
    source:
      url: http://127.0.0.1:9/tiny-20250101.qcow2
      checksum: sha256:aaa34ecb044b48e3b23b0ef56775520a75a43ccc5f3c2e23445fe3a644e554e5
    resources: {cpu: 1, memory: 256Mi}
    cloudInit: {}
    provisioners:
      - name: hello
        type: shell
        shell: {inline: echo hello}
"""


def failed_build(user, hv, *, keep: int = 600, retries: int = 0) -> Build:
    text = MANIFEST.replace("retries: 0", f"retries: {retries}")
    module = create_module(name="lab", description="", text=text, user=user).module
    build = start_build(module=module, user=user, queue=False, keep_failed_vm_s=keep)
    return runner.execute_build(build.pk, hypervisor=hv)


def domain_of(build: Build) -> str:
    from django.conf import settings

    return f"{settings.RUDDERVIRT_NAME_PREFIX}b{build.pk}-web"


def test_a_failed_build_records_the_vm_it_keeps_and_until_when(instructor, hv, engine):
    before = timezone.now()
    build = failed_build(instructor, hv, keep=600)
    assert build.status == BuildStatus.FAILED and engine[-1].keep_failed_vm
    assert BuildVM.objects.get(build=build, name="web").kept
    assert (
        before + timedelta(seconds=590)
        < build.kept_vm_until
        <= timezone.now() + timedelta(seconds=600)
    )
    assert build.keep_disks_until >= build.kept_vm_until  # the VM runs on its disks
    assert build.kept_memory_bytes == MEMORY
    assert "the failed VM web is kept running for inspection for 10m" in (
        build.log_lines.filter(vm="web").last().text
    )
    assert hv.state(domain_of(build)) == DomainState.RUNNING


def test_a_build_not_asked_to_keep_keeps_nothing(instructor, hv, engine):
    build = failed_build(instructor, hv, keep=0)
    assert not engine[-1].keep_failed_vm and build.kept_vm_until is None
    assert hv.list_domains("") == []


def test_only_the_last_attempt_keeps_a_failed_vm(instructor, hv, engine):
    build = failed_build(instructor, hv, keep=600, retries=1)
    assert [p.keep_failed_vm for p in engine] == [False, True]
    assert build.attempt == 2 and build.kept_vm_until is not None


def test_the_page_shows_the_kept_vm_its_time_left_its_console_and_clean_up(instructor, hv, engine):
    build = failed_build(instructor, hv)
    page = client_for(instructor).get(f"/builds/{build.pk}/").content.decode()
    assert "Kept for inspection: web" in page
    assert "9m 5" in page or "10m 00s" in page  # the time left
    assert f'href="/console/build/{build.pk}/web/"' in page
    assert 'id="clean-up-form"' in page
    status = client_for(instructor).get(f"/builds/{build.pk}/status.json").json()
    assert status["vms"][0]["console_url"] == f"/console/build/{build.pk}/web/"
    assert status["kept_vm"]["vms"] == ["web"] and status["kept_vm"]["seconds_left"] > 590


def test_the_kept_vm_s_console_is_its_owner_s_while_it_is_kept(
    instructor, other_instructor, hv, engine
):
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    build = failed_build(instructor, hv)
    assert build_consoles.resolve(instructor, build.pk, "web") == domain_of(build)
    with pytest.raises(PermissionDenied):
        build_consoles.resolve(other_instructor, build.pk, "web")
    Build.objects.filter(pk=build.pk).update(kept_vm_until=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Http404):
        build_consoles.resolve(instructor, build.pk, "web")


def test_clean_up_now_removes_the_vm_and_its_networks(instructor, hv, engine):
    build = failed_build(instructor, hv)
    client = client_for(instructor)
    client.get(f"/builds/{build.pk}/")
    assert client.post(f"/builds/{build.pk}/clean-up/").status_code == 403  # no CSRF token
    assert client.get(f"/builds/{build.pk}/clean-up/").status_code == 405
    token = client.cookies["csrftoken"].value
    response = client.post(f"/builds/{build.pk}/clean-up/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert hv.list_domains("") == [] and hv.list_networks("") == []
    build.refresh_from_db()
    assert build.kept_vm_until is None and not BuildVM.objects.filter(kept=True).exists()
    assert "the kept VM was removed (cleaned up by alice)" in build.log_lines.last().text
    page = client.get(f"/builds/{build.pk}/").content.decode()
    assert 'id="kept-vm"' not in page
    with pytest.raises(BuildNotAllowed, match="keeps no VM running"):
        clean_up_kept_vm(build, user=instructor, hv=hv)


def test_another_instructor_and_a_student_cannot_clean_it_up(
    instructor, other_instructor, student, hv, engine
):
    build = failed_build(instructor, hv)
    for user in (other_instructor, student):
        client = client_for(user)
        client.get("/")
        token = client.cookies.get("csrftoken")
        data = {"csrfmiddlewaretoken": token.value} if token else {}
        assert client.post(f"/builds/{build.pk}/clean-up/", data).status_code in (302, 403)
    assert hv.state(domain_of(build)) == DomainState.RUNNING


def test_kept_vms_hold_their_memory_in_the_capacity_count(instructor, hv, engine, settings):
    overhead = settings.RUDDERVIRT_CLONE_MEMORY_OVERHEAD
    assert admission.promised_by_builds().memory == 0
    build = failed_build(instructor, hv)
    assert admission.promised_by_builds().memory == MEMORY + overhead
    assert capacity.build_cost(MEMORY, 0, 1)[0] == MEMORY + overhead
    kept.remove_kept_vm(build, hv, why="test")
    assert admission.promised_by_builds().memory == 0


def test_the_reconcile_leaves_a_kept_vm_until_its_time_is_over_then_removes_it(
    instructor, hv, engine
):
    build = failed_build(instructor, hv)
    assert f"b{build.pk}" in live_build_keys()
    reconcile.reconcile(hv)
    assert hv.state(domain_of(build)) == DomainState.RUNNING
    Build.objects.filter(pk=build.pk).update(kept_vm_until=timezone.now() - timedelta(seconds=1))
    actions = reconcile.reconcile(hv)
    assert f"build {build.pk}: removed the kept VM (its time is over)" in actions
    assert hv.list_domains("") == [] and hv.list_networks("") == []
    build.refresh_from_db()
    assert build.kept_vm_until is None
    assert "its time to be kept is over" in build.log_lines.last().text


def test_the_kept_disks_are_not_removed_while_the_vm_runs_on_them(instructor, hv, engine):
    build = failed_build(instructor, hv)
    Build.objects.filter(pk=build.pk).update(keep_disks_until=timezone.now() - timedelta(seconds=1))
    reconcile.reconcile(hv)
    build.refresh_from_db()
    assert not build.disks_removed and hv.state(domain_of(build)) == DomainState.RUNNING


def test_a_kept_vm_whose_build_row_says_nothing_is_a_leftover(instructor, hv, engine):
    # A worker that died between keeping the VM and recording it: the build was failed by
    # the reconcile with nothing kept, so the domain's owner tag is not live.
    build = failed_build(instructor, hv)
    Build.objects.filter(pk=build.pk).update(kept_vm_until=None)
    actions = reconcile.reconcile(hv)
    assert f"removed leftover domain {domain_of(build)}" in actions
    assert hv.list_domains("") == []


def test_a_cancel_that_won_the_race_keeps_nothing(instructor, hv, engine):
    module = create_module(name="lab", description="", text=MANIFEST, user=instructor).module
    build = start_build(module=module, user=instructor, queue=False, keep_failed_vm_s=600)
    original = runner._fail

    def cancelled_first(build, reason):
        Build.objects.filter(pk=build.pk).update(status=BuildStatus.CANCELLED)
        original(build, reason)

    runner._fail = cancelled_first  # type: ignore[assignment]
    try:
        runner.execute_build(build.pk, hypervisor=hv)
    finally:
        runner._fail = original  # type: ignore[assignment]
    build.refresh_from_db()
    assert build.status == BuildStatus.CANCELLED and build.kept_vm_until is None
    assert hv.list_domains("") == []


def test_a_resume_removes_the_kept_vm_first(instructor, hv, engine):
    build = failed_build(instructor, hv)
    resumed = resume_build(build, user=instructor, queue=False, hv=hv)
    assert hv.list_domains("") == []
    build.refresh_from_db()
    assert build.kept_vm_until is None
    assert f"the kept VM was removed (build {build.pk} is resumed)" in "\n".join(
        build.log_lines.values_list("text", flat=True)
    )
    assert resumed.resumed_from == build


def test_clean_up_now_says_why_when_libvirt_refuses(instructor, hv, engine, monkeypatch):
    from ruddervirt.hypervisor.driver import HypervisorError

    build = failed_build(instructor, hv)

    def refuse(name):
        raise HypervisorError("libvirt is busy")

    monkeypatch.setattr(hv, "destroy", refuse)
    with pytest.raises(BuildNotAllowed, match=r"could not remove the kept VM of build .*busy"):
        clean_up_kept_vm(build, user=instructor, hv=hv)
    build.refresh_from_db()
    assert build.kept_vm_until is not None  # still kept: the sweep tries again at its end


def test_a_kept_vm_counts_as_one_of_its_instructor_s_builds_going(instructor, hv, engine, settings):
    settings.RUDDERVIRT_MAX_CONCURRENT_BUILDS = 1
    build = failed_build(instructor, hv)
    with pytest.raises(BuildNotAllowed, match=r"0 build.* and 1 keeping a failed VM.*Clean up"):
        start_build(module=build.module, user=instructor, queue=False)
    resumed = resume_build(build, user=instructor, queue=False, hv=hv)  # removes it first
    assert resumed.resumed_from == build
