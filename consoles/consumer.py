"""The console WebSocket: RFB bytes between a browser (noVNC) and a VM's VNC server.

One consumer per browser tab. Nothing here blocks the event loop: the token is redeemed
with database_sync_to_async, the hypervisor is asked in a worker thread, and the VNC
server is reached with asyncio streams. The proxy is byte-transparent: RFB is spoken end
to end by noVNC and QEMU, so every RFB feature and encoding works unchanged.

While a console is open a watchdog task checks the user's access again every
RUDDERVIRT_CONSOLE_RECHECK_S (consoles.services.recheck) and ends the console when it is
lost (CLOSE_REVOKED) or after RUDDERVIRT_CONSOLE_MAX_SESSION_S (CLOSE_TIME_LIMIT); the close
frame's reason says why, and the page shows it instead of reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from consoles import registry, services
from ruddervirt.hypervisor.driver import ConsoleAddress, HypervisorError

log = logging.getLogger(__name__)

CHUNK = 64 * 1024  # one read from the VNC server; also bounds what one message carries
CONNECT_TIMEOUT_S = 5.0
ACTIVITY_EVERY_S = 30.0
# RFB client messages that mean a person is there: KeyEvent, PointerEvent, and QEMU's
# extended key event. noVNC sends each RFB message in a WebSocket message of its own, so
# the first byte tells (a batched message is at worst an activity not noticed).
PERSON_MESSAGES = frozenset({4, 5, 255})
# Close codes (the application range 4000-4999) the page knows not to reconnect after.
CLOSE_REVOKED = 4403
CLOSE_TIME_LIMIT = 4408
CLOSE_RECHECK_FAILED = 1011  # the check itself failed: the page reconnects (fresh check)
MAX_REASON_BYTES = 123  # what a WebSocket close frame can carry


def close_reason(text: str) -> str:
    """`text` cut to fit a close frame (at a character boundary)."""
    data = text.encode()[:MAX_REASON_BYTES]
    return data.decode(errors="ignore")


async def open_vnc(address: ConsoleAddress) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to the VNC server at `address` (TCP on loopback, or a unix socket)."""
    if address.socket is not None:
        opening = asyncio.open_unix_connection(str(address.socket), limit=CHUNK)
    else:
        opening = asyncio.open_connection(address.host, address.port, limit=CHUNK)
    return await asyncio.wait_for(opening, CONNECT_TIMEOUT_S)


class ConsoleConsumer(AsyncWebsocketConsumer):
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    pump: asyncio.Task | None = None
    activity: asyncio.Task | None = None
    watchdog: asyncio.Task | None = None
    last_activity = float("-inf")

    async def __call__(self, scope, receive, send) -> None:
        """Channels' consumer loop, minus its per-message task: a console has one source of
        messages, the browser. It joins no channel layer (it talks to nobody but its VNC
        server), which saves a channel, its queue and a listener task per connection."""
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            while True:
                await self.dispatch(await receive())

    async def dispatch(self, message: dict) -> None:
        # RFB bytes touch no database: skip Channels' close_old_connections before each
        # message, a hop to its one thread-sensitive worker thread, shared by every console.
        # (connect and the activity note run their queries through database_sync_to_async,
        # which closes stale connections itself.)
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        token = self.scope["url_route"]["kwargs"].get("token") or services.token_from_subprotocols(
            self.scope.get("subprotocols", [])
        )
        self.label = services.redacted(token or "")
        self.opened = time.monotonic()
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None) if session else None
        self.bytes_up = self.bytes_down = 0
        self.target: services.Target | None = None
        try:
            if not token:
                raise services.TokenRefused("no token (path or subprotocol)")
            self.target = await database_sync_to_async(services.redeem_token)(
                token, self.scope.get("user")
            )
            address = await asyncio.to_thread(services.locate, self.target)
            self.reader, self.writer = await open_vnc(address)
        except services.TokenRefused as exc:
            log.info("console token %s refused: %s", self.label, exc)
            await self.close()
            return
        except (HypervisorError, OSError, TimeoutError) as exc:
            log.info("console %s (token %s) unreachable: %s", self.target, self.label, exc)
            await self.close()
            return
        except Exception:  # a bug must not leave the browser waiting: refuse, with a trace
            log.exception("console token %s: could not open the console", self.label)
            await self.close()
            return
        await self.accept(self._subprotocol())
        log.info("console %s opened by %s (token %s)", self.target, self.scope["user"], self.label)
        self.pump = asyncio.create_task(self._vnc_to_browser())
        self.watchdog = asyncio.create_task(self._watch())

    def _subprotocol(self) -> str | None:
        """'binary' when offered (our page, websockify's clients). Never the token one: the
        token stays out of the response."""
        return "binary" if "binary" in self.scope.get("subprotocols", []) else None

    async def _vnc_to_browser(self) -> None:
        assert self.reader is not None
        try:
            while data := await self.reader.read(CHUNK):
                self.bytes_down += len(data)
                await self.send(bytes_data=data)
        except ConnectionError:
            pass
        # The VM's side ended (powered off, QEMU restarted): tell the browser, which reconnects.
        await self.close(code=1011 if self.bytes_down == 0 else 1000)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        writer = self.writer  # the watchdog may end the console meanwhile
        if bytes_data is None or writer is None:
            return  # RFB is binary; a text frame is not ours to forward
        self.bytes_up += len(bytes_data)
        if bytes_data and bytes_data[0] in PERSON_MESSAGES:
            self._noticed_a_person()
        writer.write(bytes_data)
        try:
            await writer.drain()  # backpressure: a slow VNC server slows the browser
        except ConnectionError:
            await self.close()

    def _noticed_a_person(self) -> None:
        now = time.monotonic()
        if now - self.last_activity < ACTIVITY_EVERY_S:
            return
        self.last_activity = now
        self.activity = asyncio.create_task(self._note_activity())

    async def _note_activity(self) -> None:
        try:
            await database_sync_to_async(registry.note_activity)(
                self.target.kind, self.target.object_id
            )
        except Exception:
            log.exception("console %s: could not record activity", self.target)

    async def _watch(self) -> None:
        """End the console when its user loses access, or at the maximum session time."""
        limit = services.max_session_s()
        every = services.recheck_every_s()
        user_id = self.scope["user"].pk
        while (left := self.opened + limit - time.monotonic()) > 0:
            await asyncio.sleep(min(every, left))
            if time.monotonic() >= self.opened + limit:
                break
            try:
                reason = await database_sync_to_async(services.recheck)(
                    self.session_key, user_id, self.target
                )
            except Exception:
                log.exception("console %s: could not re-check access", self.target)
                await self._end(CLOSE_RECHECK_FAILED, "the portal could not re-check access")
                return
            if reason:
                await self._end(CLOSE_REVOKED, reason)
                return
        await self._end(
            CLOSE_TIME_LIMIT,
            f"this console was open for the maximum time ({services.duration(limit)})",
        )

    async def _end(self, code: int, reason: str) -> None:
        """Stop relaying at once, then close the WebSocket with `code` and `reason`."""
        log.info("console %s (token %s) ended: %s", self.target, self.label, reason)
        if self.pump is not None:
            self.pump.cancel()
        await self._close_vnc()  # nothing more goes to the VM, even before the browser answers
        await self.close(code=code, reason=close_reason(reason))

    async def _close_vnc(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def disconnect(self, code: int) -> None:
        if self.watchdog is not None and self.watchdog is not asyncio.current_task():
            self.watchdog.cancel()
        if self.pump is not None:  # the console was open
            self.pump.cancel()
            await self._close_vnc()
            log.info(
                "console %s closed after %.0fs (%d bytes up, %d down, code %s)",
                self.target,
                time.monotonic() - self.opened,
                self.bytes_up,
                self.bytes_down,
                code,
            )
