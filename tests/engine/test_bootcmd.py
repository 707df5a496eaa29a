"""Typing boot commands: substitution, segments for the log, pace, cancel (FakeHypervisor)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from ruddervirt.engine import bootcmd
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.engine.reporter import Stopper
from ruddervirt.guest.bootcommand import LINUX_KEYCODES as K
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.specs import DomainSpec

DOMAIN = "rvt-b1-web"
INSTALL = "<wait5>install url=http://{{ .HTTPIP }}:{{.HTTPPort}}/answers<enter>"


def labels(segments) -> list[str]:
    return [s.label if isinstance(s, bootcmd.Typing) else f"wait {s.seconds:g}" for s in segments]


def test_the_http_address_is_substituted_before_typing():
    text = bootcmd.prepare([INSTALL], "10.77.0.1", 8123)
    assert text == "<wait5>install url=http://10.77.0.1:8123/answers<enter>"


def test_a_command_without_templates_needs_no_http_server():
    assert bootcmd.prepare(["<esc><wait>", "linux<enter>"], None, None) == "<esc><wait>linux<enter>"


def test_a_command_using_the_http_server_fails_when_the_vm_cannot_reach_one():
    with pytest.raises(BuildError, match="httpDirectory"):
        bootcmd.prepare([INSTALL], None, None)


def test_an_unknown_template_is_reported_as_such_even_without_a_server():
    with pytest.raises(bootcmd.bc.BootCommandError, match="unknown template"):
        bootcmd.prepare(["{{ .Name }}"], None, None)


def test_segments_are_one_per_line_and_one_per_wait():
    segments = bootcmd.plan("<wait5>install url=http://10.77.0.1:8/a<enter><wait2>reboot\n")
    assert labels(segments) == [
        "wait 5",
        "install url=http://10.77.0.1:8/a<enter>",
        "wait 2",
        "reboot<enter>",
    ]


def test_modifiers_show_in_the_label_and_ride_on_the_next_keys():
    (segment,) = bootcmd.plan("<leftCtrlOn>c<leftCtrlOff>A")
    assert segment.label == "<leftCtrlOn>c<leftCtrlOff>A"
    assert [e.keycodes for e in segment.events] == [
        (K["KEY_LEFTCTRL"], K["KEY_C"]),
        (K["KEY_LEFTSHIFT"], K["KEY_A"]),
    ]


def test_an_unknown_key_fails_with_the_vm_name_before_anything_is_typed():
    vm = SimpleNamespace(name="web", boot_command=("<entr>",))
    with pytest.raises(BuildError, match=r"VM web: bootCommand: unknown key <entr>"):
        bootcmd.plan_for(vm, None, None)


class Recorder:
    def __init__(self, stop_after: int | None = None) -> None:
        self.sent: list[tuple[int, ...]] = []
        self.waits: list[float] = []
        self.lines: list[str] = []
        self.stop_after = stop_after

    def send(self, codes):
        self.sent.append(codes)

    def wait(self, seconds):
        self.waits.append(seconds)
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def test_each_key_is_followed_by_the_configured_pause_and_each_line_is_logged_first():
    rec = Recorder()
    bootcmd.type_segments(
        bootcmd.plan("<wait3>ab<enter>"),
        send=rec.send,
        wait=rec.wait,
        log=rec.lines.append,
        interval_s=0.25,
    )
    assert rec.sent == [(K["KEY_A"],), (K["KEY_B"],), (K["KEY_ENTER"],)]
    assert rec.waits == [3.0, 0.25, 0.25, 0.25]
    assert rec.lines == ["boot command: waiting 3s", "boot command: typing ab<enter>"]


def test_a_stopped_build_stops_typing_at_once():
    rec = Recorder(stop_after=2)
    with pytest.raises(BuildCancelled):
        bootcmd.type_segments(
            bootcmd.plan("abcdef"), send=rec.send, wait=rec.wait, log=rec.lines.append,
            interval_s=0.0,
        )  # fmt: skip
    assert len(rec.sent) == 2


def runner_for(hv: FakeHypervisor, tmp_path, *, interval: float = 0.0, hold: int = 0):
    hv.define(DomainSpec(name=DOMAIN, vcpus=1, memory_bytes=64 << 20, domain_type="qemu"))
    hv.start(DOMAIN)
    lines: list[str] = []
    runner = SimpleNamespace(
        vm=SimpleNamespace(name="web"),
        hv=hv,
        domain=DOMAIN,
        config=EngineConfig(
            storage_root=tmp_path, boot_key_interval_s=interval, boot_key_hold_ms=hold
        ),
        stopper=Stopper(),
        log=lambda text, stream="info": lines.append(text),
    )
    return runner, lines


def test_the_boot_command_reaches_the_console_with_the_configured_hold(tmp_path):
    hv = FakeHypervisor(name_prefix="rvt-")
    runner, lines = runner_for(hv, tmp_path, hold=30)
    segments = bootcmd.plan(bootcmd.prepare([INSTALL], "10.77.0.1", 8123))
    bootcmd.type_boot_command(runner, segments)
    typed = hv.sent_keys[DOMAIN]
    assert len(typed) == len("install url=http://10.77.0.1:8123/answers") + 1
    assert typed[-1] == ((K["KEY_ENTER"],), 30)
    assert typed[0] == ((K["KEY_I"],), 30)
    assert "boot command: typing install url=http://10.77.0.1:8123/answers<enter>" in lines
    assert lines[0].startswith("typing the boot command: 42 keys, 5s of waits")


def test_a_console_that_refuses_keys_fails_the_build_with_a_reason(tmp_path):
    hv = FakeHypervisor(name_prefix="rvt-")
    runner, _lines = runner_for(hv, tmp_path)
    hv.destroy(DOMAIN)
    with pytest.raises(BuildError, match="could not type the boot command"):
        bootcmd.type_boot_command(runner, bootcmd.plan("a"))


def test_cancel_during_a_long_wait_is_noticed_promptly(tmp_path):
    hv = FakeHypervisor(name_prefix="rvt-")
    runner, _lines = runner_for(hv, tmp_path)
    threading.Timer(0.2, runner.stopper.stop, args=("cancelled by alice",)).start()
    with pytest.raises(BuildCancelled, match="cancelled by alice"):
        bootcmd.type_boot_command(runner, bootcmd.plan("<wait1h>a"))
    assert DOMAIN not in hv.sent_keys
