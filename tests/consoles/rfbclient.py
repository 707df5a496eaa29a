"""A minimal RFB (VNC) client over the portal's console WebSocket, for end-to-end tests.

It does what a browser's noVNC does at the protocol level: the RFB 3.8 handshake (security
None, shared session), Raw framebuffer updates, and key events typed with a US layout
(Shift held for the characters that need it, as QEMU's VNC server expects).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from ruddervirt.guest.bootcommand import CHARACTER_KEYS

XK_RETURN = 0xFF0D
XK_TAB = 0xFF09
XK_SHIFT_L = 0xFFE1


@dataclass(frozen=True)
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    name: str


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int
    encoding: int
    pixels: bytes


class RFBClient:
    """RFB over a connected websocket-client WebSocket (binary frames)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.buffer = bytearray()
        self.init: ServerInit | None = None

    # --- bytes ---------------------------------------------------------------------
    def read(self, count: int) -> bytes:
        """Exactly `count` bytes; RFB messages may be split across or share WebSocket frames."""
        while len(self.buffer) < count:
            frame = self.ws.recv()
            if not frame:
                raise ConnectionError("the console closed")
            self.buffer += frame if isinstance(frame, bytes) else frame.encode()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data

    def send(self, data: bytes) -> None:
        self.ws.send_binary(data)

    # --- protocol ------------------------------------------------------------------
    def handshake(self) -> ServerInit:
        version = self.read(12)
        if not version.startswith(b"RFB 003."):
            raise ConnectionError(f"not an RFB server: {version!r}")
        self.send(b"RFB 003.008\n")
        count = self.read(1)[0]
        if count == 0:
            reason = self.read(struct.unpack(">I", self.read(4))[0])
            raise ConnectionError(f"the server refused: {reason!r}")
        if 1 not in self.read(count):
            raise ConnectionError("the server wants a password")
        self.send(b"\x01")
        if struct.unpack(">I", self.read(4))[0] != 0:
            raise ConnectionError("security handshake failed")
        self.send(b"\x01")  # shared: other viewers stay connected
        width, height = struct.unpack(">HH", self.read(4))
        pixel_format = self.read(16)
        name = self.read(struct.unpack(">I", self.read(4))[0]).decode(errors="replace")
        self.init = ServerInit(width, height, pixel_format[0], name)
        self.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        return self.init

    def request_update(self, *, incremental: bool = False) -> None:
        assert self.init is not None
        self.send(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.init.width, self.init.height))

    def read_update(self) -> list[Rect]:
        """The next FramebufferUpdate (skipping bells and cut text)."""
        assert self.init is not None
        while True:
            kind = self.read(1)[0]
            if kind == 0:
                break
            if kind == 2:  # Bell
                continue
            if kind == 3:  # ServerCutText
                self.read(3)
                self.read(struct.unpack(">I", self.read(4))[0])
                continue
            raise ConnectionError(f"unexpected server message {kind}")
        self.read(1)
        rects = []
        for _ in range(struct.unpack(">H", self.read(2))[0]):
            x, y, w, h, encoding = struct.unpack(">HHHHi", self.read(12))
            if encoding != 0:
                raise ConnectionError(f"unexpected encoding {encoding}")
            pixels = self.read(w * h * self.init.bits_per_pixel // 8)
            rects.append(Rect(x, y, w, h, encoding, pixels))
        return rects

    def key(self, keysym: int, down: bool) -> None:
        self.send(struct.pack(">BBxxI", 4, down, keysym))

    def tap(self, keysym: int, *, shift: bool = False) -> None:
        if shift:
            self.key(XK_SHIFT_L, True)
        self.key(keysym, True)
        self.key(keysym, False)
        if shift:
            self.key(XK_SHIFT_L, False)

    def type_text(self, text: str, *, pause_s: float = 0.03) -> None:
        """Type `text` as a person would on a US keyboard ("\\n" is Enter)."""
        for char in text:
            if char == "\n":
                self.tap(XK_RETURN)
            elif char == "\t":
                self.tap(XK_TAB)
            else:
                _, shift = CHARACTER_KEYS[char]
                self.tap(ord(char), shift=shift)
            time.sleep(pause_s)
