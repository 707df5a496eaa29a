"""A small RFB (VNC) server for tests and the console benchmark.

It speaks RFB 3.8 with no authentication, shares its screen with every client, answers a
non-incremental FramebufferUpdateRequest at once with the requested area as Raw pixels
(32 bpp, a non-blank pattern), answers incremental requests after `idle_s` (as a real
server does when nothing changes), and records the key events it receives. Loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from dataclasses import dataclass, field

VERSION = b"RFB 003.008\n"
# 32 bpp, depth 24, little endian, true colour, 8 bits per channel, red at bit 16.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
MESSAGE_SIZES = {0: 19, 3: 9, 4: 7, 5: 5}  # fixed-size client messages, after the type byte


@dataclass
class FakeRFBServer:
    width: int = 640
    height: int = 400
    name: str = "fake-rfb"
    idle_s: float = 0.5
    keys: list[tuple[bool, int]] = field(default_factory=list)  # (down, keysym)
    clients: int = 0
    port: int = 0

    async def start(self) -> None:
        self._pending: dict[asyncio.StreamWriter, bool] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def hang_up(self) -> None:
        """Drop every client, as a VNC server does when its VM powers off."""
        for writer in list(self._writers):
            writer.close()

    async def close(self) -> None:
        self.hang_up()
        self._server.close()
        if self._tasks:  # let every client handler see its end, rather than cancelling it
            await asyncio.wait(self._tasks, timeout=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def pixels(self, x: int, y: int, w: int, h: int) -> bytes:
        return _stripes(x, w, h)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await self._handshake(reader, writer)
            await self._messages(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.clients -= 1
            self._writers.discard(writer)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(VERSION)
        await reader.readexactly(12)
        writer.write(b"\x01\x01")  # one security type: None
        await reader.readexactly(1)
        writer.write(struct.pack(">I", 0))  # SecurityResult OK
        await reader.readexactly(1)  # ClientInit (shared flag)
        name = self.name.encode()
        writer.write(
            struct.pack(">HH", self.width, self.height)
            + PIXEL_FORMAT
            + struct.pack(">I", len(name))
            + name
        )
        await writer.drain()

    async def _messages(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind = (await reader.readexactly(1))[0]
            if kind == 2:  # SetEncodings: padding, count, then 4 bytes each
                _, count = struct.unpack(">BH", await reader.readexactly(3))
                await reader.readexactly(4 * count)
            elif kind == 6:  # ClientCutText
                _, length = struct.unpack(">3sI", await reader.readexactly(7))
                await reader.readexactly(length)
            elif kind in MESSAGE_SIZES:
                body = await reader.readexactly(MESSAGE_SIZES[kind])
                await self._handle(kind, body, writer)
            else:
                return  # a message this server does not know: hang up, as servers do

    async def _handle(self, kind: int, body: bytes, writer: asyncio.StreamWriter) -> None:
        if kind == 4:
            down, _, keysym = struct.unpack(">B2sI", body)
            self.keys.append((bool(down), keysym))
        elif kind == 3:
            incremental, x, y, w, h = struct.unpack(">BHHHH", body)
            w, h = max(0, min(w, self.width - x)), max(0, min(h, self.height - y))
            if not incremental:
                writer.write(update_message(x, y, w, h, self.pixels(x, y, w, h)))
                await writer.drain()
            elif not self._pending.get(writer):
                # Nothing changes on a fake screen: answer later with a small "change", like a
                # blinking cursor, without holding up the client's other messages meanwhile.
                self._pending[writer] = True
                asyncio.get_running_loop().call_later(
                    self.idle_s, self._answer_later, writer, x, y, min(w, 16), min(h, 16)
                )

    def _answer_later(self, writer: asyncio.StreamWriter, x: int, y: int, w: int, h: int) -> None:
        self._pending.pop(writer, None)
        if not writer.is_closing():
            writer.write(update_message(x, y, w, h, self.pixels(x, y, w, h)))


@functools.lru_cache(maxsize=64)
def _stripes(x: int, w: int, h: int) -> bytes:
    """A raw rectangle of vertical stripes (so a screenshot is obviously not blank); cached,
    so the fake server costs little next to the proxy being measured."""
    row = b"".join(
        b"\x40\x90\xe0\x00" if ((x + i) // 8) % 2 else b"\x10\x20\x30\x00" for i in range(w)
    )
    return row * h


def update_message(x: int, y: int, w: int, h: int, pixels: bytes) -> bytes:
    """A FramebufferUpdate with one Raw rectangle."""
    return struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", x, y, w, h, 0) + pixels


async def serve_forever(count: int, port_file: str, **options) -> None:
    """Start `count` servers, write their ports (JSON list) to `port_file`, serve until
    killed."""
    import json
    from pathlib import Path

    servers = [FakeRFBServer(**options) for _ in range(count)]
    for server in servers:
        await server.start()
    tmp = Path(port_file + ".tmp")
    tmp.write_text(json.dumps([s.port for s in servers]))
    tmp.rename(port_file)
    await asyncio.Event().wait()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=400)
    args = parser.parse_args()
    asyncio.run(serve_forever(args.count, args.port_file, width=args.width, height=args.height))


if __name__ == "__main__":
    main()
