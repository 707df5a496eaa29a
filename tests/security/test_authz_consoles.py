"""A student removed from a class keeps watching and typing into the lab's console, or
keeps a console token for later: a token no longer redeems once access is lost, and an open
console is closed within a re-check interval (or at the maximum session time), with a
reason the page shows."""

from __future__ import annotations

import asyncio
import struct

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.core.exceptions import PermissionDenied

from clones import services as clone_services
from clones.models import ClassMembership, Clone
from consoles import registry, services
from consoles.consumer import CLOSE_REVOKED, CLOSE_TIME_LIMIT
from ruddervirt.hypervisor.driver import ConsoleAddress
from tests.clones.conftest import (  # noqa: F401  (fixtures)
    fake_hv,
    klass,
    second_student,
    storage,
    version,
)
from tests.consoles.helpers import communicator, fake_vnc, session_of
from tests.helpers import client_for, csrf_post

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10


@pytest.fixture
def carols_clone(klass, version, instructor, student) -> Clone:  # noqa: F811
    clone_services.launch(klass, version, by=instructor, queue=False)
    return Clone.objects.get(student=student)


@pytest.fixture
def vnc_at(monkeypatch):
    address: list[ConsoleAddress] = []
    monkeypatch.setattr(registry, "locate", lambda kind, domain: address[0])
    return address


@pytest.fixture
def quick_recheck(settings):
    settings.RUDDERVIRT_CONSOLE_RECHECK_S = 0.2


def token_for(user, clone: Clone) -> str:
    return services.issue_token(user, "clone", clone.pk, "web").token


def remove_from_class(user, clone: Clone) -> None:
    ClassMembership.objects.filter(klass=clone.klass, student=user).delete()


async def open_console(token: str, session: str):
    """A connected console, past the RFB handshake (security None)."""
    client = communicator(f"/ws/console/{token}", session=session)
    connected, _ = await client.connect(timeout=TIMEOUT)
    assert connected
    assert await client.receive_from(TIMEOUT) == b"RFB 003.008\n"
    await client.send_to(bytes_data=b"RFB 003.008\n")
    assert await client.receive_from(TIMEOUT) == b"\x01\x01"
    await client.send_to(bytes_data=b"\x01")
    assert await client.receive_from(TIMEOUT) == b"\x00\x00\x00\x00"
    await client.send_to(bytes_data=b"\x01")
    await client.receive_from(TIMEOUT)  # ServerInit
    return client


async def closed_with(client) -> dict:
    """The close frame the portal sends (skipping screen data still in flight)."""
    while (message := await client.receive_output(TIMEOUT))["type"] != "websocket.close":
        pass
    return message


def test_a_removed_students_token_no_longer_redeems(carols_clone, student):
    token = token_for(student, carols_clone)
    remove_from_class(student, carols_clone)
    with pytest.raises(services.TokenRefused, match="no longer a student of this lab's class"):
        services.redeem_token(token, student)


def test_a_removed_student_gets_no_token_no_lab_and_no_power_button(carols_clone, student):
    remove_from_class(student, carols_clone)
    with pytest.raises(PermissionDenied):
        services.issue_token(student, "clone", carols_clone.pk, "web")
    client = client_for(student)
    assert f"/console/clone/{carols_clone.pk}/" not in client.get("/labs/").content.decode()
    response = csrf_post(client, f"/clones/{carols_clone.pk}/power/off/", {}, page="/labs/")
    assert response.status_code == 403


def test_a_removed_students_open_console_is_closed(carols_clone, student, vnc_at, quick_recheck):
    token, session = token_for(student, carols_clone), session_of(student)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client = await open_console(token, session)
            await database_sync_to_async(remove_from_class)(student, carols_clone)
            closed = await closed_with(client)
            assert closed["code"] == CLOSE_REVOKED
            assert "no longer a student of this lab's class" in closed["reason"]
            await asyncio.sleep(0.2)
            assert server.clients == 0  # the VNC connection went too
            await client.disconnect()

    asyncio.run(scenario())


def _delete_clone(clone: Clone, user) -> None:
    Clone.objects.filter(pk=clone.pk).delete()


def _reassign(clone: Clone, user) -> None:
    dave = get_user_model().objects.get(username="dave")
    Clone.objects.filter(pk=clone.pk).update(student=dave)


def _deactivate(clone: Clone, user) -> None:
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)


def _log_out(clone: Clone, user) -> None:
    Session.objects.all().delete()


def _change_password(clone: Clone, user) -> None:
    user = get_user_model().objects.get(pk=user.pk)
    user.set_password("changed-elsewhere-5")
    user.save()


@pytest.mark.parametrize(
    ("lose_access", "reason"),
    [
        (_delete_clone, "no such clone"),
        (_reassign, "this lab belongs to another student"),
        (_deactivate, "deactivated"),
        (_log_out, "logged out"),
        (_change_password, "password changed"),
    ],
)
def test_an_open_console_closes_when_its_user_loses_access(
    carols_clone, student, vnc_at, quick_recheck, lose_access, reason
):
    token, session = token_for(student, carols_clone), session_of(student)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client = await open_console(token, session)
            await database_sync_to_async(lose_access)(carols_clone, student)
            closed = await closed_with(client)
            assert closed["code"] == CLOSE_REVOKED
            assert reason in closed["reason"]
            await client.disconnect()

    asyncio.run(scenario())


def test_a_console_that_may_stay_open_survives_its_rechecks(
    carols_clone, student, vnc_at, quick_recheck
):
    token, session = token_for(student, carols_clone), session_of(student)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client = await open_console(token, session)
            await asyncio.sleep(1.0)  # five re-checks
            await client.send_to(bytes_data=struct.pack(">BBHHHH", 3, 0, 0, 0, 8, 2))
            update = await client.receive_output(TIMEOUT)
            assert update["type"] == "websocket.send" and len(update["bytes"]) > 4
            await client.disconnect()

    asyncio.run(scenario())


def test_the_maximum_session_time_closes_a_console(carols_clone, student, vnc_at, settings):
    settings.RUDDERVIRT_CONSOLE_MAX_SESSION_S = 1
    token, session = token_for(student, carols_clone), session_of(student)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client = await open_console(token, session)
            started = asyncio.get_running_loop().time()
            closed = await closed_with(client)
            assert closed["code"] == CLOSE_TIME_LIMIT
            assert closed["reason"] == "this console was open for the maximum time (1 s)"
            assert asyncio.get_running_loop().time() - started < 3
            await client.disconnect()

    asyncio.run(scenario())
