"""Adding students in bulk: accounts, invitation links, one-time passwords."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.roles import is_student
from clones.models import Class
from clones.students import add_students, parse_entries
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def empty_class(instructor):
    return Class.objects.create(name="Security", owner=instructor)


def test_entries_are_split_on_lines_commas_and_spaces_without_duplicates():
    text = "alice\nbob@Example.edu, carol; alice  <dave@example.edu>\n\n"
    assert parse_entries(text) == ["alice", "bob@example.edu", "carol", "dave@example.edu"]


def test_existing_users_are_added_and_new_ones_get_invitations(empty_class, instructor, student):
    result = add_students(empty_class, "carol, new@example.edu, newbie", by=instructor)
    assert not result.problems
    by_name = {a.user.username: a for a in result.added}
    assert not by_name["carol"].created and by_name["carol"].invitation is None
    new = by_name["new@example.edu"]
    assert new.created and new.invitation.startswith("/clones/join/") and new.password is None
    assert new.user.email == "new@example.edu" and is_student(new.user)
    assert not new.user.has_usable_password()
    assert set(empty_class.students.values_list("username", flat=True)) == {
        "carol", "new@example.edu", "newbie"
    }  # fmt: skip


def test_adding_twice_says_already_in_the_class(empty_class, instructor, student):
    add_students(empty_class, "carol", by=instructor)
    again = add_students(empty_class, "carol", by=instructor)
    assert again.added[0].already_member


def test_bad_entries_are_reported_and_the_rest_added(empty_class, instructor):
    result = add_students(empty_class, "good-one, not@valid@x, bad!name", by=instructor)
    assert [a.user.username for a in result.added] == ["good-one"]
    assert len(result.problems) == 2


def test_an_invitation_link_sets_the_password_once(empty_class, instructor):
    link = add_students(empty_class, "erin", by=instructor).added[0].invitation
    client = Client()
    assert client.get(link).status_code == 200
    response = csrf_post(
        client, link, {"new_password1": "a-long-secret-9", "new_password2": "a-long-secret-9"},
        page=link,
    )  # fmt: skip
    assert response.status_code == 302 and response["Location"] == "/labs/"
    assert get_user_model().objects.get(username="erin").check_password("a-long-secret-9")
    assert Client().get(link).status_code == 404  # spent


def test_a_one_time_password_must_be_replaced_at_first_login(empty_class, instructor):
    added = add_students(empty_class, "frank", by=instructor, mode="password").added[0]
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="frank", password=added.password)
    assert client.get("/labs/")["Location"] == "/clones/account/password/"
    csrf_post(
        client, "/clones/account/password/",
        {"new_password1": "another-secret-7", "new_password2": "another-secret-7"},
        page="/clones/account/password/",
    )  # fmt: skip
    assert client.get("/labs/").status_code == 200
    user = get_user_model().objects.get(username="frank")
    assert user.check_password("another-secret-7") and not user.check_password(added.password)


def test_the_added_page_shows_passwords_once(empty_class, instructor):
    client = client_for(instructor)
    response = csrf_post(
        client, f"/clones/classes/{empty_class.pk}/students/",
        {"entries": "gina\nhal", "mode": "password"}, page=f"/clones/classes/{empty_class.pk}/",
    )  # fmt: skip
    page = response.content.decode()
    assert response.status_code == 200
    assert len(re.findall(r'class="secret">([^<]+)<', page)) == 2


def test_students_and_other_instructors_cannot_add_students(empty_class, student, other_instructor):
    for user in (student, other_instructor):
        response = csrf_post(
            client_for(user), f"/clones/classes/{empty_class.pk}/students/",
            {"entries": "mallory", "mode": "link"},
        )  # fmt: skip
        assert response.status_code == 403
    assert not get_user_model().objects.filter(username="mallory").exists()
