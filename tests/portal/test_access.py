"""Who may reach what: the owner, another instructor, a student, and nobody."""

from __future__ import annotations

import pytest
from django.test import Client

from modules.services import create_module
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/dashboard/", "/modules/", "/modules/new/"])
def test_anonymous_is_sent_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.parametrize("url", ["/dashboard/", "/modules/", "/modules/new/"])
def test_student_cannot_reach_instructor_pages(student_client, url):
    assert student_client.get(url).status_code == 403


def test_student_cannot_validate_manifests(student_client, good_manifest):
    response = csrf_post(student_client, "/modules/validate/", {"manifest": good_manifest})
    assert response.status_code == 403


def test_home_sends_each_role_to_its_start_page(instructor_client, student_client, admin_user):
    assert instructor_client.get("/")["Location"] == "/dashboard/"
    assert student_client.get("/")["Location"] == "/labs/"
    assert client_for(admin_user).get("/")["Location"] == "/dashboard/"


def test_student_sees_their_labs_page(student_client):
    response = student_client.get("/labs/")
    assert response.status_code == 200
    assert b"You have no labs yet" in response.content


def test_other_instructor_cannot_open_or_edit_a_module(instructor, other_instructor, good_manifest):
    create_module(name="lab1", description="", text=good_manifest, user=instructor)
    bob = client_for(other_instructor)
    assert bob.get("/modules/lab1/").status_code == 403
    assert bob.get("/modules/lab1/edit/").status_code == 403
    assert bob.get("/modules/lab1/revisions/1.yaml").status_code == 403
    assert b"lab1" not in bob.get("/modules/").content


def test_owner_and_admin_can_open_a_module(instructor, admin_user, good_manifest):
    create_module(name="lab1", description="", text=good_manifest, user=instructor)
    assert client_for(instructor).get("/modules/lab1/").status_code == 200
    assert client_for(admin_user).get("/modules/lab1/").status_code == 200


def test_state_changes_need_csrf(instructor, good_manifest):
    client = Client(enforce_csrf_checks=True)
    client.force_login(instructor)
    response = client.post("/modules/validate/", {"manifest": good_manifest})
    assert response.status_code == 403


def test_validate_is_post_only(instructor_client):
    assert instructor_client.get("/modules/validate/").status_code == 405


def test_logout_is_a_post(instructor_client):
    response = csrf_post(instructor_client, "/logout/", {}, page="/dashboard/")
    assert response.status_code == 302
    assert instructor_client.get("/dashboard/").status_code == 302


def test_login_page_logs_in(instructor):
    client = Client(enforce_csrf_checks=True)
    response = csrf_post(client, "/login/", {"username": "alice", "password": "pw-alice"})
    assert response.status_code == 302
    assert client.get("/dashboard/").status_code == 200
