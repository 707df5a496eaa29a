"""The console page and its token endpoint: who may open a build VM's console."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from builds.models import Build, BuildStatus, BuildStep, BuildVM, StepStatus, VMPhase
from builds.services import submit_manifest
from consoles.models import ConsoleToken
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db

HANDBUILD_MANIFEST = """\
timeout: 30m
vms:
  - name: web
    source:
      url: http://127.0.0.1:9/tiny-20250101.qcow2
      checksum: sha256:aaa34ecb044b48e3b23b0ef56775520a75a43ccc5f3c2e23445fe3a644e554e5
    cloudInit: {}
    provisioners:
      - name: install by hand
        type: handbuild
        stepTimeout: 10m
        handbuild:
          instructions: |
            Log in as root.
            Run the vendor installer and accept the licence.
"""


def page_url(build, vm="web") -> str:
    return f"/console/build/{build.pk}/{vm}/"


def token_url(build, vm="web") -> str:
    return page_url(build, vm) + "token"


@pytest.mark.parametrize(
    ("who", "status"),
    [("instructor", 200), ("admin_user", 200), ("other_instructor", 403), ("student", 403)],
)
def test_only_the_owner_and_administrators_get_a_token(request, running_build, who, status):
    client = client_for(request.getfixturevalue(who))
    response = csrf_post(client, token_url(running_build), {})
    assert response.status_code == status
    assert response["Cache-Control"].startswith("max-age=0")
    body = json.loads(response.content)
    if status == 200:
        assert set(body) == {"token", "ws_path", "subprotocols", "expires_in"}
        assert body["ws_path"] == "/ws/console/"
        assert body["subprotocols"] == ["binary", f"rudder.token.{body['token']}"]
        assert body["expires_in"] == 60
    else:
        assert "token" not in body
        assert not ConsoleToken.objects.exists()


def test_anonymous_gets_403_for_a_token_and_the_login_page_for_the_console(running_build):
    client = Client()
    assert client.post(token_url(running_build)).status_code == 403
    response = client.get(page_url(running_build))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.parametrize(
    ("who", "status"),
    [("instructor", 200), ("admin_user", 200), ("other_instructor", 403), ("student", 403)],
)
def test_the_console_page_follows_the_same_rule(request, running_build, who, status):
    client = client_for(request.getfixturevalue(who))
    assert client.get(page_url(running_build)).status_code == status


def test_a_token_needs_post_and_csrf(running_build, instructor):
    client = client_for(instructor)
    assert client.get(token_url(running_build)).status_code == 405
    assert client.post(token_url(running_build)).status_code == 403  # no CSRF token
    assert not ConsoleToken.objects.exists()


def test_unknown_vms_builds_and_kinds_are_404(running_build, instructor):
    client = client_for(instructor)
    assert csrf_post(client, token_url(running_build, "db"), {}).status_code == 404
    assert client.get(f"/console/build/{running_build.pk + 99}/web/").status_code == 404
    assert client.get(f"/console/printer/{running_build.pk}/web/").status_code == 404


def test_the_console_page_carries_novnc_and_the_token_url(running_build, instructor):
    response = client_for(instructor).get(page_url(running_build))
    html = response.content.decode()
    assert f'data-token-url="{token_url(running_build)}"' in html
    assert "vendor/novnc/core/rfb.js" in html
    assert "js/console.js" in html
    assert "Paste as keystrokes" in html and "Ctrl+Alt+Del" in html
    assert response["X-Frame-Options"] == "SAMEORIGIN"  # the build page embeds it


def test_the_embedded_console_has_no_site_chrome(running_build, instructor):
    html = client_for(instructor).get(page_url(running_build) + "?embed=1").content.decode()
    assert 'class="topbar"' not in html
    assert "Open in a new window" in html


def waiting_build(instructor) -> Build:
    """A build of HANDBUILD_MANIFEST whose VM waits at its handbuild step, as the engine
    leaves it."""
    build = submit_manifest(text=HANDBUILD_MANIFEST, module_name="hb", user=instructor, queue=False)
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.BUILDING, started_at=timezone.now())
    BuildVM.objects.filter(build=build).update(phase=VMPhase.PROVISIONING)
    BuildStep.objects.filter(vm__build=build).update(
        status=StepStatus.WAITING_FOR_USER, started_at=timezone.now()
    )
    return build


def status_of(user, build) -> dict:
    return client_for(user).get(f"/builds/{build.pk}/status.json").json()


def test_the_live_page_gets_instructions_time_left_and_the_console(instructor):
    build = waiting_build(instructor)
    data = status_of(instructor, build)
    vm = data["vms"][0]
    step = vm["steps"][0]
    assert vm["console_url"] == f"/console/build/{build.pk}/web/"
    assert step["status"] == "WaitingForUser"
    assert step["instructions"].startswith("Log in as root.\nRun the vendor installer")
    # The step timeout (10 min) ends before the build timeout (30 min).
    assert 590 <= step["seconds_left"] <= 600
    assert step["deadline"] and step["waiting_since"] and data["now"]


def test_the_build_timeout_bounds_the_time_left(instructor):
    build = waiting_build(instructor)
    Build.objects.filter(pk=build.pk).update(started_at=timezone.now() - timedelta(minutes=28))
    step = status_of(instructor, build)["vms"][0]["steps"][0]
    assert 110 <= step["seconds_left"] <= 120


def test_the_build_page_has_a_handbuild_panel_with_continue_and_fail(instructor):
    build = waiting_build(instructor)
    html = client_for(instructor).get(f"/builds/{build.pk}/").content.decode()
    assert 'data-handbuild-vm="web"' in html
    assert f'action="/builds/{build.pk}/continue/"' in html
    assert f'action="/builds/{build.pk}/fail/"' in html
    assert 'iframe class="console-frame"' in html


def test_finished_builds_offer_no_console(running_build, instructor):
    BuildVM.objects.filter(build=running_build).update(phase=VMPhase.PROVISIONING)
    client = client_for(instructor)
    url = f"/builds/{running_build.pk}/status.json"
    assert client.get(url).json()["vms"][0]["console_url"]
    Build.objects.filter(pk=running_build.pk).update(status=BuildStatus.FAILED)
    assert client.get(url).json()["vms"][0]["console_url"] is None
    assert client.get(page_url(running_build)).status_code == 404


@pytest.mark.parametrize(
    ("phase", "live"),
    [
        (VMPhase.SOURCE_IMPORTING, False),
        (VMPhase.BOOT_COMMAND, True),
        (VMPhase.WAITING_FOR_SSH, True),
        (VMPhase.PROVISIONING, False),
    ],
)
def test_the_page_shows_the_screen_while_the_boot_command_is_typed_and_ssh_awaited(
    running_build, instructor, phase, live
):
    BuildVM.objects.filter(build=running_build).update(phase=phase)
    vm = status_of(instructor, running_build)["vms"][0]
    assert vm["live_console"] is live
    if live:
        assert vm["console_url"] == f"/console/build/{running_build.pk}/web/"
    html = client_for(instructor).get(f"/builds/{running_build.pk}/").content.decode()
    assert 'class="live-console" hidden' in html  # the script shows it while it applies
