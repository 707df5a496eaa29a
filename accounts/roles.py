"""The three roles of RudderVirt and the checks every view uses.

Administrators are Django superusers. Instructors and students are Django groups,
so an administrator can manage them from the admin site.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

INSTRUCTORS = "Instructors"
STUDENTS = "Students"
ROLE_GROUPS = (INSTRUCTORS, STUDENTS)

User = AbstractBaseUser | AnonymousUser


def _in_group(user: Any, group: str) -> bool:
    if not user.is_authenticated:
        return False
    # Cache per request-user object: templates ask several times per page.
    cache = user.__dict__.setdefault("_rv_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True))
        user.__dict__["_rv_groups"] = cache
    return group in cache


def is_admin(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_superuser)


def is_instructor(user: Any) -> bool:
    """Instructors build modules and run classes; administrators can do all they can."""
    return is_admin(user) or _in_group(user, INSTRUCTORS)


def is_student(user: Any) -> bool:
    return _in_group(user, STUDENTS)


def is_privileged(user: Any) -> bool:
    """Administrators, staff (admin-site users) and instructors: accounts an instructor
    may never make a student of a class, nor touch through one (clones.students)."""
    if not user.is_authenticated:
        return False
    return bool(user.is_superuser or user.is_staff or is_instructor(user))


def add_to_role(user: Any, group: str) -> None:
    if group not in ROLE_GROUPS:
        raise ValueError(f"unknown role {group!r}")
    user.groups.add(Group.objects.get_or_create(name=group)[0])
    user.__dict__.pop("_rv_groups", None)


def instructor_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Logged-in instructors and administrators only; everyone else gets 403."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_instructor(request.user):
            raise PermissionDenied("This page is for instructors.")
        return view(request, *args, **kwargs)

    return wrapper
