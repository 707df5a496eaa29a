"""Resuming a failed build (builds.services.resume_build): who may, which builds, what the
resume records and hands the engine, the page's forms and `manage.py build --resume`.
The engine is replaced by a stand-in (no VM): what reaches it is checked, not the build."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from builds import runner
from builds.models import Build, BuildStatus
from builds.services import BuildNotAllowed, resume_build, start_build
from modules.services import ManifestRejected, create_module
from ruddervirt.engine.errors import BuildError
from ruddervirt.hypervisor.fake import FakeHypervisor
from tests.helpers import client_for

pytestmark = pytest.mark.django_db
S = BuildStatus


@pytest.fixture
def plans(monkeypatch, settings, tmp_path) -> list:
    """Every BuildPlan the engine stand-in got; it fails each build like a third step would."""
    settings.RUDDERVIRT_STORAGE_ROOT = str(tmp_path)
    seen: list = []

    def run_build(plan, ctx):
        seen.append(plan)
        raise BuildError("VM web: step 3/3 (check) failed: the script exited with code 7")

    monkeypatch.setattr(runner, "run_build", run_build)
    return seen


def run(build: Build) -> Build:
    return runner.execute_build(build.pk, hypervisor=FakeHypervisor(name_prefix="rvt-res-"))


@pytest.fixture
def failed(instructor, good_manifest, plans) -> Build:
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    build = run(start_build(module=module, user=instructor, queue=False))
    assert build.status == S.FAILED
    return build


def test_the_owner_resumes_a_failed_build_as_a_build_of_its_own(failed, instructor, plans):
    resumed = resume_build(failed, user=instructor, queue=False)
    assert resumed.pk != failed.pk and resumed.resumed_from == failed
    assert (resumed.revision, resumed.manifest_sha256) == (failed.revision, failed.manifest_sha256)
    run(resumed)
    plan = plans[-1]
    assert (plan.key, plan.use_cache, plan.cache_scope) == (
        f"b{resumed.pk}", True, f"user-{instructor.pk}"
    )  # fmt: skip
    log = list(resumed.log_lines.values_list("text", flat=True))
    assert log[0] == f"resume of build #{failed.pk} (Failed) with the manifest as submitted"
    assert any(line.startswith(f"resuming build #{failed.pk}: each VM starts") for line in log)
    assert f"resumed by build #{resumed.pk}" in failed.log_lines.last().text


def test_an_administrator_s_resume_starts_from_the_instructor_s_checkpoints(
    failed, admin_user, instructor, plans
):
    resumed = resume_build(failed, user=admin_user, queue=False)
    run(resumed)
    assert resumed.requested_by == admin_user
    assert plans[-1].cache_scope == f"user-{instructor.pk}"  # the failed build's scope


def test_a_resume_of_a_resume_keeps_the_first_build_s_scope(failed, admin_user, instructor):
    first = run(resume_build(failed, user=admin_user, queue=False))
    second = resume_build(first, user=admin_user, queue=False)
    assert second.cache_scope == f"user-{instructor.pk}"


def test_another_instructor_may_not_resume_the_build(failed, other_instructor):
    with pytest.raises(BuildNotAllowed, match="only alice, who started build"):
        resume_build(failed, user=other_instructor, queue=False)


@pytest.mark.parametrize("status", [S.SUCCEEDED, S.BUILDING, S.PENDING])
def test_a_build_that_did_not_fail_is_not_resumed(failed, instructor, status):
    Build.objects.filter(pk=failed.pk).update(status=status)
    failed.refresh_from_db()
    with pytest.raises(BuildNotAllowed, match=f"build {failed.pk} is {status}: only a failed"):
        resume_build(failed, user=instructor, queue=False)
    assert not Build.objects.filter(resumed_from=failed).exists()


def test_a_cancelled_build_is_resumed(failed, instructor):
    Build.objects.filter(pk=failed.pk).update(status=S.CANCELLED)
    failed.refresh_from_db()
    assert resume_build(failed, user=instructor, queue=False).resumed_from == failed


def test_an_edited_manifest_becomes_the_newest_revision_and_the_resume_builds_it(
    failed, instructor, good_manifest
):
    edited = good_manifest.replace("echo hello", "echo fixed")
    resumed = resume_build(failed, user=instructor, text=edited, queue=False)
    assert resumed.manifest_text == edited and resumed.revision.number == 2
    assert "with an edited manifest" in resumed.log_lines.first().text


def test_an_invalid_edited_manifest_is_refused_and_nothing_starts(failed, instructor):
    with pytest.raises(ManifestRejected):
        resume_build(failed, user=instructor, text="vms: 3\n", queue=False)
    assert not Build.objects.filter(resumed_from=failed).exists()


def test_a_resume_of_a_build_without_the_cache_says_every_step_runs_again(
    instructor, good_manifest, plans
):
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    off = run(start_build(module=module, user=instructor, queue=False, use_cache=False))
    resumed = resume_build(off, user=instructor, queue=False)
    assert "ran with the cache off and kept no checkpoints" in resumed.log_lines.first().text
    assert resumed.use_cache is True


# --- the build page ---------------------------------------------------------------------
def test_the_failed_build_s_page_offers_resume_and_edit_to_its_owner_only(
    failed, instructor, other_instructor, admin_user
):
    page = client_for(instructor).get(f"/builds/{failed.pk}/").content.decode()
    assert 'id="resume-form"' in page and 'id="edit-and-resume"' in page
    assert 'name="csrfmiddlewaretoken"' in page.split('id="resume-form"')[1][:400]
    assert client_for(other_instructor).get(f"/builds/{failed.pk}/").status_code == 403
    assert (
        'id="resume-form"' in client_for(admin_user).get(f"/builds/{failed.pk}/").content.decode()
    )


def test_a_running_build_s_page_offers_no_resume(failed, instructor):
    Build.objects.filter(pk=failed.pk).update(status=S.BUILDING)
    page = client_for(instructor).get(f"/builds/{failed.pk}/").content.decode()
    assert 'id="resume-form"' not in page


def test_resume_posts_with_csrf_and_goes_to_the_new_build(failed, instructor, monkeypatch):
    monkeypatch.setattr("jobs.runner.submit", lambda *a, **kw: None)  # no queue in this test
    client = client_for(instructor)
    client.get(f"/builds/{failed.pk}/")
    assert client.post(f"/builds/{failed.pk}/resume/").status_code == 403  # no CSRF token
    assert not Build.objects.filter(resumed_from=failed).exists()
    token = client.cookies["csrftoken"].value
    response = client.post(f"/builds/{failed.pk}/resume/", {"csrfmiddlewaretoken": token})
    resumed = Build.objects.get(resumed_from=failed)
    assert response.status_code == 302 and response.url == f"/builds/{resumed.pk}/"
    page = client.get(response.url).content.decode()
    assert f'resumes <a href="/builds/{failed.pk}/">build #{failed.pk}</a>' in page
    assert f'Resumed by <a href="/builds/{resumed.pk}/">build #{resumed.pk}</a>' in (
        client.get(f"/builds/{failed.pk}/").content.decode()
    )


def test_edit_and_resume_shows_the_build_form_prefilled_and_reports_bad_lines(failed, instructor):
    client = client_for(instructor)
    page = client.get(f"/builds/{failed.pk}/resume/").content.decode()
    assert "echo hello" in page and 'name="keep_failed_vm"' in page
    token = client.cookies["csrftoken"].value
    bad = client.post(
        f"/builds/{failed.pk}/resume/",
        {"csrfmiddlewaretoken": token, "manifest": "vms:\n  - name: web\n    sauce: 1\n"},
    )
    assert bad.status_code == 400
    assert "line 2:" in bad.content.decode() or "line 3:" in bad.content.decode()
    assert not Build.objects.filter(resumed_from=failed).exists()


def test_a_refused_resume_says_why_on_the_page(failed, instructor):
    Build.objects.filter(pk=failed.pk).update(status=S.SUCCEEDED)
    client = client_for(instructor)
    client.get(f"/builds/{failed.pk}/")
    token = client.cookies["csrftoken"].value
    response = client.post(
        f"/builds/{failed.pk}/resume/", {"csrfmiddlewaretoken": token}, follow=True
    )
    assert "only a failed or cancelled build can be resumed" in response.content.decode()


def test_a_student_cannot_reach_the_resume_page(failed, student):
    assert client_for(student).get(f"/builds/{failed.pk}/resume/").status_code in (302, 403)


# --- the build form on the module page ---------------------------------------------------
def post_build(client, data: dict):
    client.get("/modules/lab/")
    token = client.cookies["csrftoken"].value
    return client.post("/modules/lab/build/", {"csrfmiddlewaretoken": token, **data}, follow=True)


def test_the_build_form_has_no_cache_and_keep_failed_vm(failed, instructor, monkeypatch):
    monkeypatch.setattr("jobs.runner.submit", lambda *a, **kw: None)
    client = client_for(instructor)
    page = client.get("/modules/lab/").content.decode()
    assert 'name="no_cache"' in page and 'name="keep_failed_vm"' in page
    post_build(client, {"no_cache": "on", "keep_failed_vm": "on", "keep_for": "10m"})
    build = Build.objects.order_by("-pk").first()
    assert (build.use_cache, build.keep_failed_vm_s) == (False, 600)
    post_build(client, {})
    build = Build.objects.order_by("-pk").first()
    assert (build.use_cache, build.keep_failed_vm_s) == (True, 0)


def test_the_build_form_refuses_a_keep_time_over_the_cap(failed, instructor, settings):
    settings.RUDDERVIRT_FAILED_VM_KEEP_MAX_S = 3600
    before = Build.objects.count()
    page = post_build(client_for(instructor), {"keep_failed_vm": "on", "keep_for": "2h"})
    assert "2h is longer than this host allows (1h" in page.content.decode()
    assert Build.objects.count() == before


# --- manage.py build --resume ------------------------------------------------------------
def test_build_resume_from_the_command_line_with_an_edited_manifest(
    failed, instructor, good_manifest, tmp_path, monkeypatch
):
    monkeypatch.setattr("jobs.runner.submit", lambda *a, **kw: None)
    edited = tmp_path / "fixed.yaml"
    edited.write_text(good_manifest.replace("echo hello", "echo fixed"))
    out = io.StringIO()
    call_command("build", str(edited), "--resume", str(failed.pk), "--user", "alice", stdout=out)
    resumed = Build.objects.get(resumed_from=failed)
    assert out.getvalue().strip() == f"build {resumed.pk}"
    assert "echo fixed" in resumed.manifest_text


def test_build_resume_refuses_what_does_not_go_with_it(failed):
    with pytest.raises(CommandError, match="--module does not go with --resume"):
        call_command("build", "--resume", str(failed.pk), "--module", "x", "--user", "alice")
    with pytest.raises(CommandError, match="--no-cache does not go with --resume"):
        call_command("build", "--resume", str(failed.pk), "--no-cache", "--user", "alice")
    with pytest.raises(CommandError, match="no build 999"):
        call_command("build", "--resume", "999", "--user", "alice")
    with pytest.raises(CommandError, match="give the manifest's PATH"):
        call_command("build", "--user", "alice")


def test_build_resume_of_a_succeeded_build_is_refused_clearly(failed):
    Build.objects.filter(pk=failed.pk).update(status=S.SUCCEEDED)
    with pytest.raises(CommandError, match="only a failed or cancelled build can be resumed"):
        call_command("build", "--resume", str(failed.pk), "--user", "alice")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 1800), ("", 1800), ("10m", 600), ("90", 90), ("0", 0), (600, 600), (0, 0)],
)
def test_keep_failed_vm_durations(value, seconds, settings):
    from builds.kept import keep_seconds

    settings.RUDDERVIRT_FAILED_VM_KEEP_S = 1800
    assert keep_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "-5", "5h", -5, 5 * 3600])
def test_keep_failed_vm_refuses_what_is_not_a_duration_or_over_the_cap(value, settings) -> None:
    from builds.kept import KeepRefused, keep_seconds

    settings.RUDDERVIRT_FAILED_VM_KEEP_MAX_S = 14400
    with pytest.raises(KeepRefused):
        keep_seconds(value)


def test_build_keep_failed_vm_flag(instructor, good_manifest, tmp_path, monkeypatch):
    monkeypatch.setattr("jobs.runner.submit", lambda *a, **kw: None)
    path = tmp_path / "lab.yaml"
    path.write_text(good_manifest)
    call_command("build", str(path), "--keep-failed-vm", "--user", "alice", stdout=io.StringIO())
    assert Build.objects.order_by("-pk").first().keep_failed_vm_s == 1800
    call_command(
        "build", str(path), "--keep-failed-vm=15m", "--user", "alice", stdout=io.StringIO()
    )
    assert Build.objects.order_by("-pk").first().keep_failed_vm_s == 900
    with pytest.raises(CommandError, match="--keep-failed-vm: keep the failed VM: 'x'"):
        call_command("build", str(path), "--keep-failed-vm=x", "--user", "alice")
