"""Async RFB clients for the console benchmark: straight over TCP (the baseline) or over a
WebSocket (the portal's console proxy, or websockify), with a small wsproto client.

Only what the benchmark needs: the RFB 3.8 handshake (security None, shared), Raw
encoding, and FramebufferUpdateRequest -> FramebufferUpdate round trips.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
)

READ_CHUNK = 1024 * 1024


class TCPChannel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> TCPChannel:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_CHUNK)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, count: int) -> bytes:
        return await self.reader.readexactly(count)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class WebSocketChannel:
    """Binary WebSocket messages as one byte stream (RFB does not align with frames)."""

    def __init__(self, reader, writer, ws: WSConnection) -> None:
        self.reader, self.writer, self.ws = reader, writer, ws
        self.buffer = bytearray()

    @classmethod
    async def open(
        cls, port: int, path: str, *, headers: list[tuple[bytes, bytes]], subprotocols: list[str]
    ) -> WebSocketChannel:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READ_CHUNK)
        ws = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host=f"127.0.0.1:{port}", target=path, extra_headers=headers, subprotocols=subprotocols
        )
        writer.write(ws.send(request))
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise ConnectionError(f"{path}: the server closed during the handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    channel = cls(reader, writer, ws)
                    # The server may have sent its first bytes with the 101 response.
                    channel._take_events()
                    return channel
                if isinstance(event, RejectConnection):
                    raise ConnectionError(f"{path}: refused with HTTP {event.status_code}")

    async def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send(Message(data=data)))
        await self.writer.drain()

    def _take_events(self) -> None:
        """Move every message wsproto has parsed so far into the byte buffer."""
        for event in self.ws.events():
            if isinstance(event, BytesMessage):
                self.buffer += event.data
            elif isinstance(event, Ping):
                self.writer.write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                raise ConnectionError(f"the WebSocket closed ({event.code})")

    async def read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            data = await self.reader.read(READ_CHUNK)
            if not data:
                raise ConnectionError("the WebSocket closed")
            self.ws.receive_data(data)
            self._take_events()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    async def close(self) -> None:
        try:
            self.writer.write(self.ws.send(CloseConnection(code=1000)))
            await self.writer.drain()
        except Exception:  # noqa: S110 - closing a connection that may be gone already
            pass
        self.writer.close()


class RFBSession:
    """One viewer: handshake, then update round trips."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.width = self.height = self.bytes_per_pixel = 0

    async def handshake(self) -> None:
        version = await self.channel.read(12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"not RFB: {version!r}")
        await self.channel.send(b"RFB 003.008\n")
        count = (await self.channel.read(1))[0]
        if 1 not in await self.channel.read(count):
            raise ConnectionError("the VNC server wants a password")
        await self.channel.send(b"\x01")
        if struct.unpack(">I", await self.channel.read(4))[0] != 0:
            raise ConnectionError("RFB security handshake failed")
        await self.channel.send(b"\x01")  # shared
        self.width, self.height = struct.unpack(">HH", await self.channel.read(4))
        self.bytes_per_pixel = (await self.channel.read(16))[0] // 8
        await self.channel.read(struct.unpack(">I", await self.channel.read(4))[0])
        await self.channel.send(struct.pack(">BxHi", 2, 1, 0))  # Raw only

    async def update(self, width: int, height: int) -> int:
        """Request (non-incremental) the top-left width x height area and read the whole
        FramebufferUpdate; returns its size in bytes."""
        width, height = min(width, self.width), min(height, self.height)
        await self.channel.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        while (kind := (await self.channel.read(1))[0]) != 0:
            if kind != 2:  # a Bell is one byte; anything else is not expected here
                raise ConnectionError(f"unexpected server message {kind}")
        await self.channel.read(1)
        total = 4
        for _ in range(struct.unpack(">H", await self.channel.read(2))[0]):
            _, _, w, h, encoding = struct.unpack(">HHHHi", await self.channel.read(12))
            size = w * h * self.bytes_per_pixel if encoding == 0 else 0
            await self.channel.read(size)
            total += 12 + size
        return total

    async def close(self) -> None:
        await self.channel.close()
