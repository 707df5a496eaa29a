"""Shared bits of the build commands."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from builds.models import Build


def get_build(build_id: int) -> Build:
    build = Build.objects.select_related("module").filter(pk=build_id).first()
    if build is None:
        raise CommandError(f"no build {build_id}")
    return build


def cli_user(username: str | None):
    """Who the command acts as: --user, else the first administrator."""
    User = get_user_model()
    if username:
        user = User.objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        return user
    user = User.objects.filter(is_superuser=True).order_by("pk").first()
    if user is None:
        raise CommandError(
            "no administrator exists yet: run `python manage.py ensure_admin` or pass --user"
        )
    return user


def dumps(data: dict) -> str:
    return json.dumps(data, sort_keys=False)
