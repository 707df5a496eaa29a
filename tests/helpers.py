"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.test import Client

from accounts.roles import add_to_role


def make_user(username: str, role: str | None = None, *, superuser: bool = False):
    User = get_user_model()
    if superuser:
        return User.objects.create_superuser(username=username, password="pw-" + username)
    user = User.objects.create_user(username=username, password="pw-" + username)
    if role:
        add_to_role(user, role)
    return user


def client_for(user) -> Client:
    """A client logged in as `user` that enforces CSRF like a browser would."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_post(client: Client, url: str, data: dict, *, page: str = "/login/"):
    """POST with the CSRF token a browser would have picked up on `page`."""
    client.get(page)
    token = client.cookies["csrftoken"].value
    return client.post(url, {**data, "csrfmiddlewaretoken": token})


def migrate(targets):
    """Move the test database to the migration `targets` (a list of (app, name)); returns
    the models as they were then. Tests that go back put the newest schema back after."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def migrate_to_newest():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
