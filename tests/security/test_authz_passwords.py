"""Someone at an unlocked browser (or holding a stolen session cookie) changes the account's
password to lock its owner out: the change needs the current password, except for the one
moment a password must be chosen (a one-time password or an invitation)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from clones.models import Class
from clones.students import add_students
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db

URL = "/clones/account/password/"
NEW = "a-brand-new-secret-42"


def change(client: Client, **fields: str):
    data = {"new_password1": NEW, "new_password2": NEW, **fields}
    return csrf_post(client, URL, data, page=URL)


def password_is(user, password: str) -> bool:
    return get_user_model().objects.get(pk=user.pk).check_password(password)


@pytest.mark.parametrize("who", ["instructor", "student", "admin_user"])
def test_a_password_change_without_the_old_password_fails(request, who):
    user = request.getfixturevalue(who)
    response = change(client_for(user))
    assert response.status_code == 200  # the form again, with its error
    assert "old_password" in response.context["form"].errors
    assert password_is(user, f"pw-{user.username}") and not password_is(user, NEW)


def test_a_wrong_old_password_fails(student):
    response = change(client_for(student), old_password="guess-1234")
    assert "old_password" in response.context["form"].errors
    assert password_is(student, "pw-carol")


def test_the_page_asks_for_the_current_password(student):
    page = client_for(student).get(URL).content.decode()
    assert 'name="old_password"' in page and "Change your password" in page


def test_with_the_old_password_it_changes_and_other_sessions_end(student):
    elsewhere = client_for(student)  # e.g. a session someone else stole
    here = client_for(student)
    response = change(here, old_password="pw-carol")
    assert response.status_code == 302 and response["Location"] == "/labs/"
    assert password_is(student, NEW)
    assert here.get("/labs/").status_code == 200  # this session stays logged in
    assert elsewhere.get("/labs/").status_code == 302  # to the login page


def test_after_a_one_time_password_the_new_one_is_chosen_without_the_old(instructor):
    klass = Class.objects.create(name="Security 101", owner=instructor)
    added = add_students(klass, "frank", by=instructor, mode="password").added[0]
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="frank", password=added.password)
    assert 'name="old_password"' not in client.get(URL).content.decode()
    assert change(client).status_code == 302
    assert password_is(added.user, NEW)
    # Chosen once: from now on the old password is asked for.
    again = change(client, new_password1="third-secret-77", new_password2="third-secret-77")
    assert "old_password" in again.context["form"].errors
    assert password_is(added.user, NEW)
