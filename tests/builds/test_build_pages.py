"""The build pages and their permissions, with records made directly (no VM needed)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from builds.models import Build, BuildLogLine, BuildStatus, BuildStep, ModuleVersion, StepStatus
from builds.services import start_build
from builds.transitions import InvalidTransition, transition
from builds.views import manifest_diff
from modules.services import create_module, save_manifest
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def module(instructor, good_manifest):
    return create_module(name="lab", description="", text=good_manifest, user=instructor).module


@pytest.fixture
def build(module, instructor):
    build = start_build(module=module, user=instructor, queue=False)
    BuildLogLine.objects.create(
        build=build, seq=1, created_at=timezone.now(), vm="web", text="a log line"
    )
    return build


def test_owner_sees_the_build_page_with_vms_and_steps(build, instructor):
    page = client_for(instructor).get(f"/builds/{build.pk}/").content.decode()
    assert "web" in page and "a log line" not in page  # the log arrives through status.json
    assert f'data-status-url="/builds/{build.pk}/status.json"' in page


def test_other_instructor_and_student_get_403_everywhere(build, other_instructor, student):
    for user in (other_instructor, student):
        client = client_for(user)
        for url in (
            f"/builds/{build.pk}/",
            f"/builds/{build.pk}/status.json",
            f"/builds/{build.pk}/log.txt",
        ):
            assert client.get(url).status_code == 403, (user, url)
        assert csrf_post(client, f"/builds/{build.pk}/cancel/", {}).status_code == 403


def test_anonymous_is_sent_to_login(client, build):
    assert client.get(f"/builds/{build.pk}/")["Location"].startswith("/login/")


def test_status_json_has_phases_steps_and_new_log_lines(build, instructor):
    client = client_for(instructor)
    data = client.get(f"/builds/{build.pk}/status.json?after=0").json()
    assert data["status"] == "Pending" and data["terminal"] is False
    assert data["vms"][0]["name"] == "web"
    assert data["vms"][0]["steps"][0] == {
        "name": "hello",
        "type": "shell",
        "status": "Pending",
        "exit_code": None,
        "duration_s": None,
        "message": "",
    }
    assert [line["text"] for line in data["log"]] == ["a log line"]
    assert client.get(f"/builds/{build.pk}/status.json?after=1").json()["log"] == []


def test_log_download_is_the_whole_log_as_text(build, instructor):
    response = client_for(instructor).get(f"/builds/{build.pk}/log.txt")
    body = b"".join(response.streaming_content).decode()
    assert response["Content-Disposition"] == f'attachment; filename="build-{build.pk}.log"'
    assert "[web] a log line" in body


def test_cancel_of_a_queued_build_cancels_it_at_once(build, instructor):
    response = csrf_post(client_for(instructor), f"/builds/{build.pk}/cancel/", {})
    assert response.status_code == 302
    build.refresh_from_db()
    assert build.status == BuildStatus.CANCELLED and build.cancel_requested


def test_cancel_is_post_only(build, instructor):
    assert client_for(instructor).get(f"/builds/{build.pk}/cancel/").status_code == 405


def test_continue_reaches_the_waiting_step_only(build, instructor):
    client = client_for(instructor)
    step = BuildStep.objects.get(vm__build=build)
    csrf_post(client, f"/builds/{build.pk}/continue/", {"vm": "web"})
    step.refresh_from_db()
    assert step.user_decision == ""  # nothing was waiting
    BuildStep.objects.filter(pk=step.pk).update(status=StepStatus.WAITING_FOR_USER)
    csrf_post(client, f"/builds/{build.pk}/fail/", {"vm": "web", "reason": "the installer hung"})
    step.refresh_from_db()
    assert (step.user_decision, step.user_reason) == ("fail", "the installer hung")


def test_transitions_follow_the_table(build):
    with pytest.raises(InvalidTransition):
        transition(build, BuildStatus.SUCCEEDED)
    transition(build, BuildStatus.NETWORKING)
    assert build.started_at is not None
    stale = Build.objects.get(pk=build.pk)
    transition(build, BuildStatus.CANCELLED)
    with pytest.raises(InvalidTransition):  # the other writer lost the race
        transition(stale, BuildStatus.BUILDING)
    assert Build.objects.get(pk=build.pk).finished_at is not None


def test_module_page_lists_versions_with_a_manifest_diff(module, build, instructor, good_manifest):
    changed = good_manifest.replace("echo hello", "echo bye")
    revision = save_manifest(module=module, text=changed, user=instructor).revision
    second = start_build(module=module, user=instructor, revision=revision, queue=False)
    for number, b in ((1, build), (2, second)):
        ModuleVersion.objects.create(
            module=module,
            number=number,
            build=b,
            manifest_text=b.manifest_text,
            manifest_sha256=b.manifest_sha256,
            storage_path="/nonexistent",
        )
    client = client_for(instructor)
    page = client.get("/modules/lab/").content.decode()
    assert "lab@1" in page and "lab@2" in page
    diff = client.get("/modules/lab/versions/2/").content.decode()
    assert (
        "-        shell: {inline: echo hello}" in diff
        and "+        shell: {inline: echo bye}" in diff
    )
    kinds = dict(
        (line, kind) for kind, line in manifest_diff(None, ModuleVersion.objects.get(number=1))
    )
    assert kinds["+vms:"] == "add"
