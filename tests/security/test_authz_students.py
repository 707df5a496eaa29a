"""An instructor adds another instructor, a staff member or the administrator as a "student"
of their class, hoping for an invitation link or a one-time password to that account, or
for a console into its labs: refused, and nothing about the account changes."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from accounts.roles import INSTRUCTORS, STUDENTS, add_to_role
from clones.models import AccountSetup, Class, ClassMembership
from clones.students import add_students, find_invitation
from tests.clones.conftest import make_version, storage  # noqa: F401  (fixture)
from tests.helpers import client_for, csrf_post, make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def klass(instructor):
    return Class.objects.create(name="Security 101", owner=instructor)


@pytest.fixture
def staff(db):
    user = make_user("steve")
    user.is_staff = True
    user.save()
    return user


def snapshot(user) -> tuple:
    """Everything adding a student could change about an account."""
    user = get_user_model().objects.get(pk=user.pk)
    groups = tuple(sorted(user.groups.values_list("name", flat=True)))
    setup = AccountSetup.objects.filter(user=user).exists()
    return user.password, groups, user.is_active, setup, user.memberships.count()


@pytest.mark.parametrize("who", ["other_instructor", "admin_user", "staff"])
@pytest.mark.parametrize("mode", ["link", "password"])
def test_a_privileged_account_cannot_be_added_as_a_student(request, klass, instructor, who, mode):
    target = request.getfixturevalue(who)
    before = snapshot(target)
    result = add_students(klass, target.username, by=instructor, mode=mode)
    assert result.added == []
    assert result.problems == [
        f"{target.username!r} is an administrator, staff or instructor account: only "
        "student accounts can be added to a class"
    ]
    assert snapshot(target) == before  # same password, groups, no invitation, no class
    assert target.check_password(f"pw-{target.username}")


def test_naming_the_account_by_its_email_address_is_refused_too(
    klass, instructor, other_instructor
):
    other_instructor.email = "bob@example.edu"
    other_instructor.save()
    result = add_students(klass, "BOB@example.edu", by=instructor)
    assert result.added == [] and "instructor account" in result.problems[0]
    assert not ClassMembership.objects.filter(student=other_instructor).exists()


def test_students_around_the_refused_account_are_still_added(
    klass, instructor, other_instructor, student
):
    result = add_students(klass, "carol, bob, newbie", by=instructor)
    assert sorted(a.user.username for a in result.added) == ["carol", "newbie"]
    assert len(result.problems) == 1


def test_the_class_page_says_why_the_account_was_not_added(klass, instructor, admin_user):
    response = csrf_post(
        client_for(instructor),
        f"/clones/classes/{klass.pk}/students/",
        {"entries": admin_user.username, "mode": "password"},
        page=f"/clones/classes/{klass.pk}/",
    )
    page = response.content.decode()
    assert response.status_code == 200
    assert "only student accounts can be added to a class" in page
    assert 'class="secret"' not in page  # no password, no link
    assert Client().login(username=admin_user.username, password="pw-root-admin")


def test_launch_class_refuses_an_instructor_as_a_student(
    instructor,
    other_instructor,
    storage,  # noqa: F811  (the fixture imported above)
):
    make_version(instructor, storage)
    with pytest.raises(CommandError, match="only student accounts"):
        call_command(
            "launch_class", "--module", "lab", "--students", "bob", "--user", "alice",
            stdout=io.StringIO(),
        )  # fmt: skip
    assert not ClassMembership.objects.filter(student=other_instructor).exists()


def test_an_invitation_stops_working_when_its_account_becomes_an_instructor(klass, instructor):
    link = add_students(klass, "erin", by=instructor).added[0].invitation
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert find_invitation(token) is not None
    erin = get_user_model().objects.get(username="erin")
    add_to_role(erin, INSTRUCTORS)  # an administrator promotes erin
    assert find_invitation(token) is None
    response = Client().post(
        link, {"new_password1": "taken-over-9", "new_password2": "taken-over-9"}
    )
    assert response.status_code == 404
    erin.refresh_from_db()
    assert not erin.has_usable_password()


def test_an_existing_student_is_added_as_before(klass, instructor):
    dave = make_user("dave", STUDENTS)
    result = add_students(klass, "dave", by=instructor)
    assert [a.user for a in result.added] == [dave] and not result.problems
    assert dave.check_password("pw-dave")
