"""The console WebSocket, through the whole ASGI application, against a fake VNC server."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
from channels.db import database_sync_to_async

from consoles import consumer, registry, services
from ruddervirt.hypervisor.driver import ConsoleAddress, InvalidState
from tests.consoles.helpers import communicator, fake_vnc, session_of

pytestmark = pytest.mark.django_db(transaction=True)
TIMEOUT = 10


@pytest.fixture
def vnc_at(monkeypatch):
    """Point every console at `address[0]` instead of asking libvirt."""
    address: list[ConsoleAddress] = []
    monkeypatch.setattr(registry, "locate", lambda kind, domain: address[0])
    return address


def token_for(user, build) -> str:
    return services.issue_token(user, "build", build.pk, "web").token


async def connect(path: str, **options):
    client = communicator(path, **options)
    connected, _ = await client.connect(timeout=TIMEOUT)
    return client, connected


async def rfb_handshake(client) -> bytes:
    """Client side of RFB 3.8 with security None; returns ServerInit."""
    assert await client.receive_from(TIMEOUT) == b"RFB 003.008\n"
    await client.send_to(bytes_data=b"RFB 003.008\n")
    assert await client.receive_from(TIMEOUT) == b"\x01\x01"
    await client.send_to(bytes_data=b"\x01")
    assert await client.receive_from(TIMEOUT) == b"\x00\x00\x00\x00"
    await client.send_to(bytes_data=b"\x01")
    return await client.receive_from(TIMEOUT)


def test_the_owner_reaches_the_vms_vnc_server_both_ways(running_build, instructor, vnc_at):
    token, session = token_for(instructor, running_build), session_of(instructor)

    async def scenario():
        async with fake_vnc(width=320, height=200) as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            init = await rfb_handshake(client)
            assert struct.unpack(">HH", init[:4]) == (320, 200)
            await client.send_to(bytes_data=struct.pack(">BBHI", 4, 1, 0, 0x61))  # 'a' down
            await client.send_to(bytes_data=struct.pack(">BBHHHH", 3, 0, 0, 0, 8, 2))
            update = await client.receive_from(TIMEOUT)
            assert len(update) == 4 + 12 + 8 * 2 * 4
            assert server.keys == [(True, 0x61)]
            await client.disconnect()

    asyncio.run(scenario())


def test_a_used_token_is_refused(running_build, instructor, vnc_at):
    token, session = token_for(instructor, running_build), session_of(instructor)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            first, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            _, connected_again = await connect(f"/ws/console/{token}", session=session)
            assert not connected_again
            await first.disconnect()

    asyncio.run(scenario())


def test_an_expired_token_is_refused(running_build, instructor, vnc_at):
    from datetime import timedelta

    from django.utils import timezone

    from consoles.models import ConsoleToken

    token, session = token_for(instructor, running_build), session_of(instructor)
    ConsoleToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    vnc_at.append(ConsoleAddress(host="127.0.0.1", port=9))
    _, connected = asyncio.run(connect(f"/ws/console/{token}", session=session))
    assert not connected


@pytest.mark.parametrize("who", ["other_instructor", "student", "admin_user"])
def test_a_token_works_only_in_the_session_of_its_user(request, running_build, instructor, who):
    token = token_for(instructor, running_build)
    other = session_of(request.getfixturevalue(who))
    _, connected = asyncio.run(connect(f"/ws/console/{token}", session=other))
    assert not connected
    assert services.redeem_token(token, instructor).vm == "web"  # still the owner's


def test_browsers_send_the_token_as_a_subprotocol_and_it_is_not_echoed(
    running_build, instructor, vnc_at
):
    issued = services.issue_token(instructor, "build", running_build.pk, "web")
    session = session_of(instructor)

    async def scenario():
        async with fake_vnc(width=64, height=48) as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client = communicator(issued.ws_path, session=session, subprotocols=issued.subprotocols)
            connected, chosen = await client.connect(timeout=TIMEOUT)
            assert connected
            assert chosen == "binary"  # the token stays out of the response
            init = await rfb_handshake(client)
            assert struct.unpack(">HH", init[:4]) == (64, 48)
            await client.disconnect()
            # Spent: the same offer is refused.
            again = communicator(issued.ws_path, session=session, subprotocols=issued.subprotocols)
            connected, _ = await again.connect(timeout=TIMEOUT)
            assert not connected

    asyncio.run(scenario())


def test_a_websocket_without_any_token_is_refused(running_build, instructor):
    client = communicator("/ws/console/", session=session_of(instructor), subprotocols=["binary"])
    connected, _ = asyncio.run(client.connect(timeout=TIMEOUT))
    assert not connected


def test_anonymous_websockets_are_refused(running_build, instructor):
    token = token_for(instructor, running_build)
    _, connected = asyncio.run(connect(f"/ws/console/{token}"))
    assert not connected


def test_a_foreign_origin_is_refused(running_build, instructor, vnc_at):
    token, session = token_for(instructor, running_build), session_of(instructor)
    vnc_at.append(ConsoleAddress(host="127.0.0.1", port=9))
    path = f"/ws/console/{token}"
    _, connected = asyncio.run(connect(path, session=session, origin=b"https://evil.example"))
    assert not connected
    _, connected = asyncio.run(connect(path, session=session, origin=None))
    assert not connected


def test_losing_the_right_after_the_token_was_issued_closes_the_door(
    running_build, instructor, other_instructor, vnc_at
):
    token, session = token_for(instructor, running_build), session_of(instructor)
    running_build.module.owner = other_instructor
    running_build.module.save()
    vnc_at.append(ConsoleAddress(host="127.0.0.1", port=9))
    _, connected = asyncio.run(connect(f"/ws/console/{token}", session=session))
    assert not connected


def test_a_vm_that_is_not_running_refuses_the_console(running_build, instructor, monkeypatch):
    def not_running(kind, domain):
        raise InvalidState(f"{domain!r} is not running: no console")

    monkeypatch.setattr(registry, "locate", not_running)
    token, session = token_for(instructor, running_build), session_of(instructor)
    _, connected = asyncio.run(connect(f"/ws/console/{token}", session=session))
    assert not connected


def test_the_console_closes_when_the_vnc_server_goes_away(running_build, instructor, vnc_at):
    token, session = token_for(instructor, running_build), session_of(instructor)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            await rfb_handshake(client)
            server.hang_up()  # the VM powered off
            closed = await client.receive_output(TIMEOUT)
            assert closed["type"] == "websocket.close"

    asyncio.run(scenario())


def test_several_viewers_watch_one_vm_at_once(running_build, instructor, admin_user, vnc_at):
    tokens = [token_for(instructor, running_build), token_for(admin_user, running_build)]
    sessions = [session_of(instructor), session_of(admin_user)]

    async def scenario():
        async with fake_vnc(width=64, height=48) as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            clients = []
            for token, session in zip(tokens, sessions, strict=True):
                client, connected = await connect(f"/ws/console/{token}", session=session)
                assert connected
                clients.append(client)
            inits = [await rfb_handshake(c) for c in clients]
            assert all(struct.unpack(">HH", init[:4]) == (64, 48) for init in inits)
            assert server.clients == 2
            for client in clients:
                await client.disconnect()

    asyncio.run(scenario())


def test_a_slow_hypervisor_does_not_hold_up_other_consoles(running_build, instructor, monkeypatch):
    """The event loop keeps serving while one console waits for libvirt."""
    slow_token = token_for(instructor, running_build)
    fast_token = token_for(instructor, running_build)
    session = session_of(instructor)
    done: dict[str, float] = {}

    async def scenario():
        async with fake_vnc() as server:
            address = ConsoleAddress(host="127.0.0.1", port=server.port)
            first_call = [True]

            def locate(kind, domain):
                if first_call[0]:
                    first_call[0] = False
                    time.sleep(2.0)  # a libvirt call stuck for a while
                return address

            monkeypatch.setattr(registry, "locate", locate)

            async def open_console(name, token, delay):
                await asyncio.sleep(delay)
                client, connected = await connect(f"/ws/console/{token}", session=session)
                done[name] = time.monotonic()
                assert connected
                await client.disconnect()

            await asyncio.gather(
                open_console("slow", slow_token, 0), open_console("fast", fast_token, 0.3)
            )

    asyncio.run(scenario())
    assert done["fast"] < done["slow"] - 1.0


def test_tokens_are_redeemed_off_the_event_loop(running_build, instructor):
    """database_sync_to_async is what keeps ORM calls out of the loop (Django raises
    SynchronousOnlyOperation otherwise): the consumer must get a result, not that error."""
    token = token_for(instructor, running_build)

    async def redeem():
        return await database_sync_to_async(services.redeem_token)(token, instructor)

    assert asyncio.run(redeem()).vm == "web"


def test_typing_counts_as_activity_but_screen_updates_do_not(
    running_build, instructor, vnc_at, monkeypatch
):
    token, session = token_for(instructor, running_build), session_of(instructor)
    noticed: list[tuple[str, int]] = []
    monkeypatch.setattr(registry, "note_activity", lambda kind, oid: noticed.append((kind, oid)))

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            await rfb_handshake(client)
            await client.send_to(bytes_data=struct.pack(">BBHHHH", 3, 0, 0, 0, 8, 2))
            await client.receive_from(TIMEOUT)
            await asyncio.sleep(0.3)
            assert noticed == []  # the viewer asked for pixels: nobody typed
            for down in (1, 0, 1, 0):  # two key presses: one note (throttled)
                await client.send_to(bytes_data=struct.pack(">BBHI", 4, down, 0, 0x61))
            await asyncio.sleep(0.5)
            await client.disconnect()

    asyncio.run(scenario())
    assert noticed == [("build", running_build.pk)]


def test_clone_consoles_report_activity_to_the_clones_app(monkeypatch):
    """The "clone" kind has an activity hook (clones.services.note_console_activity)."""
    seen = []
    monkeypatch.setattr(
        "clones.services.note_console_activity", lambda clone_id: seen.append(clone_id)
    )
    registry.note_activity("clone", 7)
    registry.note_activity("build", 7)  # builds have none: nothing happens
    assert seen == [7]


def test_a_vnc_server_on_a_unix_socket_works_too(running_build, instructor, vnc_at, tmp_path):
    token, session = token_for(instructor, running_build), session_of(instructor)
    path = tmp_path / "vnc.sock"

    async def scenario():
        async with fake_vnc(width=100, height=50) as server:
            unix = await asyncio.start_unix_server(server._serve, str(path))
            vnc_at.append(ConsoleAddress(socket=path))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            init = await rfb_handshake(client)
            assert struct.unpack(">HH", init[:4]) == (100, 50)
            await client.disconnect()
            unix.close()

    asyncio.run(scenario())


async def close_frame(client) -> dict:
    """The portal's close frame, past any screen data still in flight."""
    while (message := await client.receive_output(TIMEOUT))["type"] != "websocket.close":
        pass
    return message


def test_an_open_console_closes_when_its_module_changes_hands(
    running_build, instructor, other_instructor, vnc_at, settings
):
    settings.RUDDERVIRT_CONSOLE_RECHECK_S = 0.2
    token, session = token_for(instructor, running_build), session_of(instructor)

    def hand_over() -> None:
        running_build.module.owner = other_instructor
        running_build.module.save()

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            await rfb_handshake(client)
            await database_sync_to_async(hand_over)()
            closed = await close_frame(client)
            assert closed["code"] == consumer.CLOSE_REVOKED
            assert closed["reason"] == (
                "you no longer have access to this console: only the module's owner and "
                "administrators see its build VMs"
            )
            # Keys typed after the close never reach the VM.
            await client.send_to(bytes_data=struct.pack(">BBHI", 4, 1, 0, 0x61))
            await asyncio.sleep(0.3)
            assert server.keys == []
            await client.disconnect()

    asyncio.run(scenario())


def test_the_maximum_session_time_closes_a_console_with_its_reason(
    running_build, instructor, vnc_at, settings
):
    settings.RUDDERVIRT_CONSOLE_MAX_SESSION_S = 1
    token, session = token_for(instructor, running_build), session_of(instructor)

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            await rfb_handshake(client)
            closed = await close_frame(client)
            assert closed["code"] == consumer.CLOSE_TIME_LIMIT
            assert closed["reason"] == "this console was open for the maximum time (1 s)"
            await client.disconnect()

    asyncio.run(scenario())


def test_a_failing_recheck_closes_the_console_for_a_fresh_connect(
    running_build, instructor, vnc_at, settings, monkeypatch
):
    settings.RUDDERVIRT_CONSOLE_RECHECK_S = 0.2
    token, session = token_for(instructor, running_build), session_of(instructor)

    def broken(*args):
        raise RuntimeError("database is gone")

    async def scenario():
        async with fake_vnc() as server:
            vnc_at.append(ConsoleAddress(host="127.0.0.1", port=server.port))
            client, connected = await connect(f"/ws/console/{token}", session=session)
            assert connected
            await rfb_handshake(client)
            monkeypatch.setattr(services, "recheck", broken)
            closed = await close_frame(client)
            assert closed["code"] == consumer.CLOSE_RECHECK_FAILED  # the page reconnects
            await client.disconnect()

    asyncio.run(scenario())


def test_close_reasons_fit_a_close_frame_and_limits_read_well():
    assert len(consumer.close_reason("é" * 100).encode()) <= consumer.MAX_REASON_BYTES
    assert consumer.close_reason("é" * 100) == "é" * 61
    assert [services.duration(s) for s in (28800, 5400, 45, 1.5)] == [
        "8 h", "90 min", "45 s", "1.5 s"
    ]  # fmt: skip
