"""Who may see and act on classes and clones: the owner, another instructor, the student,
another student, and nobody."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import Client

from clones import consoles, services
from clones.models import Clone, CloneStatus
from clones.runner import run_inline
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clones(klass, version, instructor, fake_hv) -> dict[str, Clone]:
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([c.pk for c in made], "provision")
    return {c.student.username: c for c in Clone.objects.select_related("student")}


def test_the_class_dashboard_is_for_its_instructors(
    klass, instructor, other_instructor, student, admin_user
):
    url = f"/clones/classes/{klass.pk}/"
    assert client_for(instructor).get(url).status_code == 200
    assert client_for(admin_user).get(url).status_code == 200
    assert client_for(other_instructor).get(url).status_code == 403
    assert client_for(student).get(url).status_code == 403
    assert Client().get(url).status_code == 302  # to the login page


def test_the_dashboard_shows_every_clone_with_its_status_and_consoles(klass, instructor, clones):
    page = client_for(instructor).get(f"/clones/classes/{klass.pk}/").content.decode()
    for clone in clones.values():
        assert f'data-clone="{clone.pk}"' in page
        assert f"/console/clone/{clone.pk}/web/" in page
        assert f"/console/clone/{clone.pk}/dc/" in page  # instructors see invisible VMs
    status = client_for(instructor).get(f"/clones/classes/{klass.pk}/status.json").json()
    assert {c["status"] for c in status["clones"]} == {CloneStatus.RUNNING}
    assert all(vm["ssh_port"] for c in status["clones"] for vm in c["vms"])


def test_my_labs_lists_only_my_clones_and_only_visible_vms(student, clones):
    page = client_for(student).get("/labs/").content.decode()
    mine, theirs = clones["carol"], clones["dave"]
    assert f"/console/clone/{mine.pk}/web/" in page
    assert f"/console/clone/{mine.pk}/dc/" not in page  # invisible
    assert f"/console/clone/{theirs.pk}/" not in page
    data = client_for(student).get("/clones/mine.json").json()
    assert [c["id"] for c in data["clones"]] == [mine.pk]
    assert "ssh_port" not in data["clones"][0]["vms"][0]


def test_a_student_can_power_their_own_clone(student, clones):
    mine = clones["carol"]
    response = csrf_post(client_for(student), f"/clones/{mine.pk}/power/off/", {}, page="/labs/")
    assert response.status_code == 302
    assert Clone.objects.get(pk=mine.pk).status == CloneStatus.STOPPING


def test_power_answers_json_to_scripts(student, clones):
    mine = clones["carol"]
    client = client_for(student)
    client.get("/labs/")
    response = client.post(
        f"/clones/{mine.pk}/power/restart/",
        {"vm": "web"},
        HTTP_ACCEPT="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert response.status_code == 202
    assert response.json()["status"] == CloneStatus.STOPPING
    again = client.post(
        f"/clones/{mine.pk}/power/on/",
        HTTP_ACCEPT="application/json",
        HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
    )
    assert again.status_code == 409 and "Stopping" in again.json()["error"]


def test_a_student_cannot_act_on_another_students_clone(student, clones):
    theirs = clones["dave"]
    client = client_for(student)
    for action in ("on", "off", "restart"):
        assert (
            csrf_post(client, f"/clones/{theirs.pk}/power/{action}/", {}, page="/labs/").status_code
            == 403
        )
    assert client.get(f"/clones/{theirs.pk}/status.json").status_code == 403
    assert csrf_post(client, f"/clones/{theirs.pk}/delete/", {}, page="/labs/").status_code == 403
    assert Clone.objects.get(pk=theirs.pk).status == CloneStatus.RUNNING


def test_another_instructor_cannot_act_on_the_class(klass, other_instructor, clones):
    client = client_for(other_instructor)
    clone = clones["carol"]
    assert (
        csrf_post(client, f"/clones/{clone.pk}/reprovision/", {}, page="/labs/").status_code == 403
    )
    assert csrf_post(client, f"/clones/{clone.pk}/power/off/", {}, page="/labs/").status_code == 403
    assert (
        csrf_post(client, f"/clones/classes/{klass.pk}/stop/", {}, page="/labs/").status_code == 403
    )
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.RUNNING


def test_the_instructor_can_reprovision_one_clone_and_stop_the_class(klass, instructor, clones):
    client = client_for(instructor)
    clone = clones["carol"]
    assert (
        csrf_post(client, f"/clones/{clone.pk}/reprovision/", {}, page="/labs/").status_code == 302
    )
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.PROVISIONING
    csrf_post(client, f"/clones/classes/{klass.pk}/stop/", {}, page="/labs/")
    assert Clone.objects.get(pk=clones["dave"].pk).status == CloneStatus.STOPPING


def test_state_changes_need_post_and_csrf(student, clones):
    mine = clones["carol"]
    client = client_for(student)
    assert client.get(f"/clones/{mine.pk}/power/off/").status_code == 405
    assert client.post(f"/clones/{mine.pk}/power/off/").status_code == 403  # no CSRF token
    assert Clone.objects.get(pk=mine.pk).status == CloneStatus.RUNNING


def test_console_access_follows_the_clone(
    student, second_student, instructor, other_instructor, admin_user, clones
):
    mine = clones["carol"]
    assert consoles.resolve(student, mine.pk, "web") == mine.vms.get(name="web").domain_name
    assert consoles.resolve(instructor, mine.pk, "dc") == mine.vms.get(name="dc").domain_name
    assert consoles.resolve(admin_user, mine.pk, "dc")
    with pytest.raises(PermissionDenied):
        consoles.resolve(student, mine.pk, "dc")  # invisible to students
    for stranger in (second_student, other_instructor):
        with pytest.raises(PermissionDenied):
            consoles.resolve(stranger, mine.pk, "web")
        with pytest.raises(PermissionDenied):  # no hint about which VMs exist
            consoles.resolve(stranger, mine.pk, "nope")
    with pytest.raises(Http404):
        consoles.resolve(student, mine.pk, "nope")
    with pytest.raises(Http404):
        consoles.resolve(student, 999999, "web")


def test_the_console_page_opens_for_the_owner_only(student, second_student, clones):
    mine = clones["carol"]
    url = f"/console/clone/{mine.pk}/web/"
    assert client_for(student).get(url).status_code == 200
    assert client_for(second_student).get(url).status_code == 403


def test_the_console_page_has_power_buttons_and_a_switch_between_the_vms(
    student, instructor, clones
):
    mine = clones["carol"]
    page = client_for(student).get(f"/console/clone/{mine.pk}/web/").content.decode()
    for action in ("on", "off", "restart"):
        assert f'action="/clones/{mine.pk}/power/{action}/"' in page
    assert f"/console/clone/{mine.pk}/dc/" not in page  # invisible VMs: no console for students
    teacher_page = client_for(instructor).get(f"/console/clone/{mine.pk}/web/").content.decode()
    assert f"/console/clone/{mine.pk}/dc/" in teacher_page


def test_the_instructor_sets_limits_for_one_clone_and_the_student_sees_them(
    instructor, student, clones
):
    mine = clones["carol"]
    response = csrf_post(
        client_for(instructor),
        f"/clones/{mine.pk}/limits/",
        {"expires_at": "2099-01-02T03:04", "inactivity_min": "45"},
    )
    assert response.status_code == 302
    mine.refresh_from_db()
    assert mine.inactivity_timeout_s == 45 * 60 and mine.expires_at.year == 2099
    assert Clone.objects.get(pk=clones["dave"].pk).expires_at is None
    page = client_for(student).get("/labs/").content.decode()
    assert "Available until 2099-01-02" in page
    assert "Shuts down after 45 minutes without console input" in page
    assert csrf_post(client_for(student), f"/clones/{mine.pk}/limits/", {}).status_code == 403
