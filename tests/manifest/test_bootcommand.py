"""Boot command tokenizer, Linux key codes and template substitution."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from ruddervirt.guest.bootcommand import (
    CHARACTER_KEYS,
    LINUX_KEYCODES,
    MODIFIER_KEYS,
    SPECIAL_KEYS,
    BootCommandError,
    Key,
    KeyEvent,
    Modifier,
    Text,
    Wait,
    WaitEvent,
    key_events,
    substitute,
    tokenize,
)

SHIFT, CTRL, ALT = 42, 29, 56


def test_text_and_special_keys() -> None:
    assert tokenize("ls -l<enter>") == [
        Text("l"), Text("s"), Text(" "), Text("-"), Text("l"), Key("enter"),
    ]  # fmt: skip


@pytest.mark.parametrize("name", [*SPECIAL_KEYS])
def test_every_special_key_of_the_manifest_is_known(name: str) -> None:
    assert tokenize(f"<{name}>") == [Key(name)]


def test_token_names_are_case_insensitive() -> None:
    assert tokenize("<ENTER><PageUp><pagedown><F12>") == [
        Key("enter"), Key("pageUp"), Key("pageDown"), Key("f12"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("token", "seconds"),
    [
        ("<wait>", 1.0),
        ("<wait5>", 5.0),
        ("<wait0>", 0.0),
        ("<wait10s>", 10.0),
        ("<wait1m>", 60.0),
        ("<wait1m30s>", 90.0),
        ("<wait1.5s>", 1.5),
        ("<wait500ms>", 0.5),
        ("<Wait2M>", 120.0),
    ],
)
def test_waits(token: str, seconds: float) -> None:
    assert tokenize(token) == [Wait(seconds)]


def test_modifiers_on_and_off() -> None:
    tokens = tokenize("<leftCtrlOn><leftAltOn><del><leftAltOff><leftCtrlOff>")
    assert tokens == [
        Modifier("leftCtrl", True), Modifier("leftAlt", True), Key("del"),
        Modifier("leftAlt", False), Modifier("leftCtrl", False),
    ]  # fmt: skip
    for name in MODIFIER_KEYS:
        assert tokenize(f"<{name}On><{name}Off>") == [Modifier(name, True), Modifier(name, False)]


def test_angle_bracket_that_is_not_a_token_is_literal() -> None:
    assert tokenize("a < b") == [Text("a"), Text(" "), Text("<"), Text(" "), Text("b")]
    assert [t.char for t in tokenize("</x><>< enter>")] == list("</x><>< enter>")  # type: ignore[union-attr]


def test_tokens_know_their_offset() -> None:
    tokens = tokenize("ab<enter>c")
    assert [t.offset for t in tokens] == [0, 1, 2, 9]


@pytest.mark.parametrize(
    ("command", "offset", "message"),
    [
        ("install<entr>", 7, "unknown key <entr>; did you mean <enter>?"),
        ("<leftCtrl>", 0, "did you mean <leftCtrlOn>?"),
        ("ok <wait5x>", 3, "<wait5x> is not a wait"),
        ("ok <f13>", 3, "unknown key <f13>"),
        ("naïve", 2, "character 'ï' cannot be typed on a US keyboard"),
        ("a\rb", 1, "cannot be typed"),
    ],
)
def test_errors_carry_their_offset(command: str, offset: int, message: str) -> None:
    with pytest.raises(BootCommandError) as caught:
        tokenize(command)
    assert caught.value.offset == offset
    assert message in caught.value.message
    assert f"(at character {offset + 1})" in str(caught.value)


def test_key_events_for_characters_use_us_layout() -> None:
    events = key_events(tokenize("aA1! \n\t:~"))
    assert events[1].keycodes == (SHIFT, 30)  # type: ignore[union-attr]
    assert events == [
        KeyEvent((30,)), KeyEvent((SHIFT, 30)), KeyEvent((2,)), KeyEvent((SHIFT, 2)),
        KeyEvent((57,)), KeyEvent((28,)), KeyEvent((15,)), KeyEvent((SHIFT, 39)),
        KeyEvent((SHIFT, 41)),
    ]  # fmt: skip


def test_key_events_hold_modifiers_and_carry_waits() -> None:
    events = key_events(
        tokenize("<leftCtrlOn><leftAltOn><del><leftAltOff>c<leftCtrlOff>x<wait10s><f2>")
    )
    assert events == [
        KeyEvent((CTRL, ALT, 111)),
        KeyEvent((CTRL, 46)),
        KeyEvent((45,)),
        WaitEvent(10.0),
        KeyEvent((60,)),
    ]


def test_held_shift_is_not_pressed_twice() -> None:
    assert key_events(tokenize("<leftShiftOn>A<leftShiftOff>")) == [KeyEvent((SHIFT, 30))]
    assert key_events(tokenize("<rightShiftOn>A<rightShiftOff>")) == [KeyEvent((54, 30))]


def test_every_printable_ascii_character_can_be_typed() -> None:
    printable = set(string.printable) - {"\r", "\x0b", "\x0c"}
    assert printable <= set(CHARACTER_KEYS)
    shifted = {c for c, (_, shift) in CHARACTER_KEYS.items() if shift}
    assert shifted == set(string.ascii_uppercase) | set('!@#$%^&*()_+{}|:"~<>?')


def test_key_table_spot_checks() -> None:
    assert LINUX_KEYCODES["KEY_A"] == 30
    assert LINUX_KEYCODES["KEY_ENTER"] == 28
    assert LINUX_KEYCODES["KEY_LEFTSHIFT"] == 42
    assert SPECIAL_KEYS["return"] == SPECIAL_KEYS["enter"] == 28
    assert SPECIAL_KEYS["pageDown"] == 109
    assert SPECIAL_KEYS["f11"] == 87
    assert MODIFIER_KEYS["rightAlt"] == 100


HEADER = Path("/usr/include/linux/input-event-codes.h")


@pytest.mark.skipif(not HEADER.exists(), reason="kernel headers (linux-libc-dev) not installed")
def test_key_table_matches_the_kernel_header() -> None:
    defined = dict(re.findall(r"#define\s+(KEY_\w+)\s+(\d+)\b", HEADER.read_text()))
    for name, code in LINUX_KEYCODES.items():
        assert int(defined[name]) == code, name


@pytest.mark.parametrize(
    "command",
    [
        "http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.cfg",
        "http://{{.HTTPIP}}:{{.HTTPPort}}/ks.cfg",
        "http://{{   .HTTPIP }}:{{.HTTPPort   }}/ks.cfg",
    ],
)
def test_substitute_http_address(command: str) -> None:
    assert substitute(command, "10.0.2.2", 8123) == "http://10.0.2.2:8123/ks.cfg"


@pytest.mark.parametrize(
    ("command", "offset"),
    [("ks=http://{{ .HTTPHost }}/", 10), ("{{ .httpip }}", 0), ("{{ HTTPIP }}", 0)],
)
def test_substitute_rejects_unknown_templates(command: str, offset: int) -> None:
    with pytest.raises(BootCommandError) as caught:
        substitute(command, "10.0.2.2", 8123)
    assert caught.value.offset == offset
    assert "expected {{ .HTTPIP }} or {{ .HTTPPort }}" in caught.value.message


def test_text_without_templates_is_unchanged() -> None:
    assert substitute("a { b } c", "x", 1) == "a { b } c"
