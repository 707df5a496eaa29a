"""Boot commands: the keystrokes typed into a VM's console before SSH is awaited.

Grammar (manifest.md, `bootCommand`): special keys `<enter>` `<return>` `<tab>` `<esc>` `<bs>`
`<del>` `<spacebar>` `<up>` `<down>` `<left>` `<right>` `<home>` `<end>` `<pageUp>`
`<pageDown>` `<insert>` `<f1>`..`<f12>`; waits `<wait>` (1 s), `<waitN>` (N seconds) and
`<waitDURATION>` (Go duration: `<wait10s>`, `<wait1m30s>`); modifiers held and released with
`<leftCtrlOn>`/`<leftCtrlOff>` and likewise Alt, Shift and the right-hand keys. Token names
are case-insensitive. Everything else is typed literally, one character at a time, on a US
keyboard layout. A `<word>` that is not a known token is an error (we do not type it
literally: a typo like `<entr>` would otherwise be typed into the installer). A `<` not
followed by a word and `>` (e.g. `a < b`) is a literal `<`.

`{{ .HTTPIP }}` and `{{ .HTTPPort }}` are substituted (by `substitute`) before tokenizing.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

# Linux input event codes (linux/input-event-codes.h), the codeset libvirt's send-key takes.
LINUX_KEYCODES: dict[str, int] = {
    "KEY_ESC": 1, "KEY_1": 2, "KEY_2": 3, "KEY_3": 4, "KEY_4": 5, "KEY_5": 6, "KEY_6": 7,
    "KEY_7": 8, "KEY_8": 9, "KEY_9": 10, "KEY_0": 11, "KEY_MINUS": 12, "KEY_EQUAL": 13,
    "KEY_BACKSPACE": 14, "KEY_TAB": 15, "KEY_Q": 16, "KEY_W": 17, "KEY_E": 18, "KEY_R": 19,
    "KEY_T": 20, "KEY_Y": 21, "KEY_U": 22, "KEY_I": 23, "KEY_O": 24, "KEY_P": 25,
    "KEY_LEFTBRACE": 26, "KEY_RIGHTBRACE": 27, "KEY_ENTER": 28, "KEY_LEFTCTRL": 29,
    "KEY_A": 30, "KEY_S": 31, "KEY_D": 32, "KEY_F": 33, "KEY_G": 34, "KEY_H": 35, "KEY_J": 36,
    "KEY_K": 37, "KEY_L": 38, "KEY_SEMICOLON": 39, "KEY_APOSTROPHE": 40, "KEY_GRAVE": 41,
    "KEY_LEFTSHIFT": 42, "KEY_BACKSLASH": 43, "KEY_Z": 44, "KEY_X": 45, "KEY_C": 46,
    "KEY_V": 47, "KEY_B": 48, "KEY_N": 49, "KEY_M": 50, "KEY_COMMA": 51, "KEY_DOT": 52,
    "KEY_SLASH": 53, "KEY_RIGHTSHIFT": 54, "KEY_LEFTALT": 56, "KEY_SPACE": 57,
    "KEY_F1": 59, "KEY_F2": 60, "KEY_F3": 61, "KEY_F4": 62, "KEY_F5": 63, "KEY_F6": 64,
    "KEY_F7": 65, "KEY_F8": 66, "KEY_F9": 67, "KEY_F10": 68, "KEY_F11": 87, "KEY_F12": 88,
    "KEY_RIGHTCTRL": 97, "KEY_RIGHTALT": 100, "KEY_HOME": 102, "KEY_UP": 103,
    "KEY_PAGEUP": 104, "KEY_LEFT": 105, "KEY_RIGHT": 106, "KEY_END": 107, "KEY_DOWN": 108,
    "KEY_PAGEDOWN": 109, "KEY_INSERT": 110, "KEY_DELETE": 111,
}  # fmt: skip
_K = LINUX_KEYCODES

# Token name (as the manifest spells it) -> key code.
SPECIAL_KEYS: dict[str, int] = {
    "enter": _K["KEY_ENTER"], "return": _K["KEY_ENTER"], "tab": _K["KEY_TAB"],
    "esc": _K["KEY_ESC"], "bs": _K["KEY_BACKSPACE"], "del": _K["KEY_DELETE"],
    "spacebar": _K["KEY_SPACE"], "up": _K["KEY_UP"], "down": _K["KEY_DOWN"],
    "left": _K["KEY_LEFT"], "right": _K["KEY_RIGHT"], "home": _K["KEY_HOME"],
    "end": _K["KEY_END"], "pageUp": _K["KEY_PAGEUP"], "pageDown": _K["KEY_PAGEDOWN"],
    "insert": _K["KEY_INSERT"],
    **{f"f{n}": _K[f"KEY_F{n}"] for n in range(1, 13)},
}  # fmt: skip
MODIFIER_KEYS: dict[str, int] = {
    "leftCtrl": _K["KEY_LEFTCTRL"], "leftAlt": _K["KEY_LEFTALT"],
    "leftShift": _K["KEY_LEFTSHIFT"], "rightCtrl": _K["KEY_RIGHTCTRL"],
    "rightAlt": _K["KEY_RIGHTALT"], "rightShift": _K["KEY_RIGHTSHIFT"],
}  # fmt: skip


def _character_keys() -> dict[str, tuple[int, bool]]:
    """US layout: character -> (key code, needs shift)."""
    table: dict[str, tuple[int, bool]] = {}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        code = _K[f"KEY_{letter.upper()}"]
        table[letter], table[letter.upper()] = (code, False), (code, True)
    for digit, shifted in zip("1234567890", "!@#$%^&*()", strict=True):
        table[digit], table[shifted] = (_K[f"KEY_{digit}"], False), (_K[f"KEY_{digit}"], True)
    pairs = {
        "MINUS": "-_", "EQUAL": "=+", "LEFTBRACE": "[{", "RIGHTBRACE": "]}",
        "BACKSLASH": "\\|", "SEMICOLON": ";:", "APOSTROPHE": "'\"", "GRAVE": "`~",
        "COMMA": ",<", "DOT": ".>", "SLASH": "/?",
    }  # fmt: skip
    for key, chars in pairs.items():
        table[chars[0]], table[chars[1]] = (_K[f"KEY_{key}"], False), (_K[f"KEY_{key}"], True)
    table[" "] = (_K["KEY_SPACE"], False)
    table["\n"] = (_K["KEY_ENTER"], False)
    table["\t"] = (_K["KEY_TAB"], False)
    return table


CHARACTER_KEYS: dict[str, tuple[int, bool]] = _character_keys()


class BootCommandError(ValueError):
    """A boot command that cannot be typed; `offset` is the 0-based index in the string."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at character {offset + 1})")
        self.message = message
        self.offset = offset


@dataclass(frozen=True)
class Key:
    name: str  # as in SPECIAL_KEYS
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Text:
    char: str  # one character of CHARACTER_KEYS
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Wait:
    seconds: float
    offset: int = field(default=-1, compare=False)


@dataclass(frozen=True)
class Modifier:
    name: str  # as in MODIFIER_KEYS
    on: bool
    offset: int = field(default=-1, compare=False)


Token = Key | Text | Wait | Modifier


@dataclass(frozen=True)
class KeyEvent:
    """Linux key codes pressed together, then released (modifiers first)."""

    keycodes: tuple[int, ...]


@dataclass(frozen=True)
class WaitEvent:
    seconds: float


_TOKEN = re.compile(r"<([A-Za-z][A-Za-z0-9.µμ]*)>")
_WAIT = re.compile(r"wait(?P<seconds>\d+)?|wait(?P<duration>.+)", re.IGNORECASE)
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_SPECIAL_BY_LOWER = {name.lower(): name for name in SPECIAL_KEYS}
_MODIFIER_BY_LOWER = {
    f"{name.lower()}{state}": (name, state == "on")
    for name in MODIFIER_KEYS
    for state in ("on", "off")
}
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_TEMPLATE_VARIABLE = re.compile(r"\s*\.(HTTPIP|HTTPPort)\s*")


def tokenize(command: str) -> list[Token]:
    """The tokens of one boot command string. Raises BootCommandError for an unknown `<word>`
    or a character a US keyboard cannot type."""
    tokens: list[Token] = []
    position = 0
    while position < len(command):
        match = _TOKEN.match(command, position)
        if match:
            tokens.append(_special(match.group(1), position))
            position = match.end()
            continue
        char = command[position]
        if char not in CHARACTER_KEYS:
            raise BootCommandError(
                f"character {char!r} cannot be typed on a US keyboard (only ASCII letters, "
                "digits, punctuation, space, tab and newline can)",
                position,
            )
        tokens.append(Text(char, position))
        position += 1
    return tokens


def _special(word: str, offset: int) -> Token:
    lower = word.lower()
    if lower in _SPECIAL_BY_LOWER:
        return Key(_SPECIAL_BY_LOWER[lower], offset)
    if lower in _MODIFIER_BY_LOWER:
        name, on = _MODIFIER_BY_LOWER[lower]
        return Modifier(name, on, offset)
    wait = _WAIT.fullmatch(word)
    if wait:
        return Wait(_wait_seconds(wait, word, offset), offset)
    known = [
        *SPECIAL_KEYS,
        *(f"{name}{state}" for name in MODIFIER_KEYS for state in ("On", "Off")),
    ]
    close = difflib.get_close_matches(word, [*known, "wait"], n=1, cutoff=0.6)
    hint = f"did you mean <{close[0]}>? " if close else ""
    raise BootCommandError(
        f"unknown key <{word}>; {hint}(known: "
        + " ".join(f"<{k}>" for k in SPECIAL_KEYS)
        + " <wait> <waitN> <wait10s> and <leftCtrlOn>/<leftCtrlOff> and the same for "
        "leftAlt, leftShift, rightCtrl, rightAlt, rightShift)",
        offset,
    )


def _wait_seconds(match: re.Match[str], word: str, offset: int) -> float:
    if match["seconds"] is not None:
        return float(int(match["seconds"]))
    duration = match["duration"]
    if duration is None:
        return 1.0
    duration = duration.lower()
    if not _DURATION.fullmatch(duration):
        raise BootCommandError(
            f"<{word}> is not a wait: expected <wait>, <waitN> (seconds) or a duration like "
            "<wait10s> or <wait1m30s>",
            offset,
        )
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(duration))


def key_events(tokens: list[Token]) -> list[KeyEvent | WaitEvent]:
    """What to send to the console: each key or character as one chord including the
    modifiers held on at that point (and shift for shifted characters), and the waits."""
    held: list[int] = []
    events: list[KeyEvent | WaitEvent] = []
    for token in tokens:
        if isinstance(token, Modifier):
            code = MODIFIER_KEYS[token.name]
            if token.on and code not in held:
                held.append(code)
            elif not token.on and code in held:
                held.remove(code)
        elif isinstance(token, Wait):
            events.append(WaitEvent(token.seconds))
        elif isinstance(token, Key):
            events.append(KeyEvent((*held, SPECIAL_KEYS[token.name])))
        else:
            code, shifted = CHARACTER_KEYS[token.char]
            shift_held = {_K["KEY_LEFTSHIFT"], _K["KEY_RIGHTSHIFT"]} & set(held)
            extra = (_K["KEY_LEFTSHIFT"],) if shifted and not shift_held else ()
            events.append(KeyEvent((*held, *extra, code)))
    return events


def substitute(command: str, http_ip: str, http_port: int | str) -> str:
    """Replace `{{ .HTTPIP }}` and `{{ .HTTPPort }}` (any spacing). Any other `{{ ... }}`
    raises BootCommandError: it would otherwise be typed literally into the installer."""

    def replace(match: re.Match[str]) -> str:
        variable = _TEMPLATE_VARIABLE.fullmatch(match.group(1))
        if variable is None:
            raise BootCommandError(
                f"unknown template {match.group(0)!r} (expected {{{{ .HTTPIP }}}} or "
                "{{ .HTTPPort }})",
                match.start(),
            )
        return http_ip if variable.group(1) == "HTTPIP" else str(http_port)

    return _TEMPLATE.sub(replace, command)
