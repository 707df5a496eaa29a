"""Helpers for console tests: sessions, a browser-like WebSocket client of the real ASGI
application (origin check, session auth, routing), and a fake VNC server."""

from __future__ import annotations

import contextlib

from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

ORIGIN = b"http://127.0.0.1:8000"


def session_of(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def communicator(
    path: str,
    *,
    session: str | None = None,
    origin: bytes | None = ORIGIN,
    subprotocols: list[str] | None = None,
) -> WebsocketCommunicator:
    """A browser-like WebSocket client of the real application (ruddervirt.asgi)."""
    from ruddervirt.asgi import application

    headers = []
    if origin is not None:
        headers.append((b"origin", origin))
    if session is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()))
    return WebsocketCommunicator(application, path, headers=headers, subprotocols=subprotocols)


@contextlib.asynccontextmanager
async def fake_vnc(**options):
    from bench.fake_rfb import FakeRFBServer

    server = FakeRFBServer(**options)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
