"""The build benchmark's pieces that need no VM: recipe, marker parsing, phase cuts, tables.

The benchmark itself (bench/build_bench.py) boots real guests under both tools; these tests
pin what it computes from their output, so that a changed log line fails here, not as a
wrong number in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.build_phases import PHASES, MissingMark, packer_marks, phases, rudder_marks
from bench.build_recipe import (
    DEBIAN,
    GUESTS,
    TINY,
    GuestTiming,
    Recipe,
    checksum_script,
    guest_timing,
    hello_script,
    manifest_text,
    packer_template,
)
from bench.build_report import RunRecord, markdown_table, text_table
from bench.build_timing import Event, Timeline, timed_reporter_class
from bench.build_watch import GuestWatch
from ruddervirt.engine.reporter import NullReporter
from ruddervirt.guest.ssh import generate_keypair
from ruddervirt.manifest import validate

SHA = "ab" * 32


def make_recipe(tmp_path: Path, guest=TINY) -> Recipe:
    image, blob = tmp_path / f"{guest.name}.qcow2", tmp_path / "blob.bin"
    image.write_bytes(b"qcow2")
    blob.write_bytes(b"blob")
    key = tmp_path / "packer-key"
    private, public = generate_keypair("rvbench-packer")  # Packer's validate reads the key
    key.write_text(private)
    return Recipe(guest, image, "cd" * 32, blob, SHA, key, public)


@pytest.fixture(params=sorted(GUESTS))
def recipe(request, tmp_path: Path) -> Recipe:
    return make_recipe(tmp_path, GUESTS[request.param])


def guest_lines(t: float = 10.0, *, sshd: str = "1000") -> list[tuple[float, str]]:
    return [
        (t, f"RVBENCH step=1 start=14.00 end=14.05 now=14.50 sshd_ticks={sshd}"),
        (t + 1.0, f"{SHA}  {TINY.blob_dest}"),
        (t + 1.1, "RVBENCH step=3 start=15.00 end=15.20"),
    ]


# --- the recipe -----------------------------------------------------------------------------
def test_the_manifest_is_valid_and_carries_both_scripts_and_the_upload(recipe):
    result = validate(manifest_text(recipe))

    assert result.valid, [p.message for p in result.errors]
    steps = result.manifest.vms[0].provisioners
    assert [s.type for s in steps] == ["shell", "file", "shell"]
    assert steps[0].inline.strip() == hello_script(recipe.guest).strip()
    assert steps[1].destination == recipe.guest.blob_dest
    assert steps[2].inline.strip() == checksum_script(recipe.guest).strip()
    vm = result.manifest.vms[0]
    assert vm.communicator.ssh_username == recipe.guest.user
    assert vm.resources.memory == recipe.guest.memory_mib * 1024 * 1024


def test_on_debian_both_tools_log_in_as_debian_and_work_in_its_home(tmp_path):
    recipe = make_recipe(tmp_path, DEBIAN)
    builder = json.loads(packer_template(recipe, tmp_path, tmp_path / "s.log", tmp_path / "s"))[
        "builders"
    ][0]

    assert validate(manifest_text(recipe)).manifest.vms[0].communicator.ssh_username == "debian"
    assert (builder["ssh_username"], builder["ssh_private_key_file"]) == (
        "debian",
        str(recipe.key_file),
    )
    assert "ssh_password" not in builder
    assert builder["shutdown_command"] == "sudo -n poweroff"
    assert (builder["memory"], builder["disk_size"]) == (1024, "2048M")
    assert DEBIAN.blob_dest == "/home/debian/blob.bin"
    assert '"$comm" = "(sshd)"' in hello_script(DEBIAN)
    assert '"$comm" = "(dropbear)"' in hello_script(TINY)
    assert "tee /home/debian/hello.txt" in hello_script(DEBIAN)


def test_the_packer_template_keeps_the_guest_off_the_network_and_vnc_on_loopback(recipe, tmp_path):
    template = json.loads(
        packer_template(recipe, tmp_path / "out", tmp_path / "serial.log", tmp_path / "seed.iso")
    )

    builder = template["builders"][0]
    args = {tuple(a) for a in builder["qemuargs"]}
    assert (
        "-netdev",
        "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22",
    ) in args
    assert ("-device", "virtio-net,netdev=user.0") in args
    assert builder["vnc_bind_address"] == "127.0.0.1"
    assert builder["accelerator"] == "tcg"
    assert [p["type"] for p in template["provisioners"]] == ["shell", "file", "shell"]


def test_the_lean_packer_template_has_qemus_own_devices_the_seed_on_virtio_and_a_fast_poweroff(
    recipe, tmp_path
):
    seed = tmp_path / "seed.iso"
    template = json.loads(
        packer_template(recipe, tmp_path / "out", tmp_path / "serial.log", seed, lean=True)
    )
    builder = template["builders"][0]
    args = [tuple(a) for a in builder["qemuargs"]]
    flags = [a[0] for a in args]
    assert "-cpu" not in flags and "-cdrom" not in flags and "-object" not in flags
    assert "-drive" not in flags  # Packer keeps its own disk
    assert ("-device", "virtio-blk-pci,drive=seed") in args
    assert any(a[0] == "-blockdev" and f"file.filename={seed}" in a[1] for a in args)
    assert (
        "-netdev",
        "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22",
    ) in args
    assert builder["boot_wait"] == "1s"
    assert "sync; poweroff -f" in builder["shutdown_command"]


@pytest.mark.skipif(shutil.which("packer") is None, reason="Debian's packer is not installed")
@pytest.mark.parametrize("lean", [False, True], ids=["dressed", "lean"])
def test_packer_accepts_the_template(recipe, tmp_path, lean):
    path = tmp_path / "template.json"
    path.write_text(
        packer_template(
            recipe, tmp_path / "out", tmp_path / "serial.log", tmp_path / "seed.iso", lean=lean
        )
    )

    done = subprocess.run(
        ["packer", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"CHECKPOINT_DISABLE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr


# --- what the guest measured ------------------------------------------------------------------
def test_guest_timing_adds_both_scripts_and_dates_sshd_from_its_start_ticks(tmp_path):
    timing = guest_timing(guest_lines(), make_recipe(tmp_path))

    assert timing.commands_s == pytest.approx(0.05 + 0.20)
    assert timing.sshd_age_s == pytest.approx(14.50 - 10.00)
    assert timing.step1_marker_t == 10.0
    assert timing.checksum_ok


def test_a_wrong_checksum_and_a_missing_sshd_are_reported_not_invented(tmp_path):
    lines = [(t, text.replace(SHA, "00" * 32)) for t, text in guest_lines(sshd="")]

    timing = guest_timing(lines, make_recipe(tmp_path))

    assert not timing.checksum_ok
    assert timing.sshd_age_s is None


def test_a_missing_marker_line_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="RVBENCH"):
        guest_timing(guest_lines()[:1], make_recipe(tmp_path))


# --- cutting runs into phases ------------------------------------------------------------------
def rudder_events() -> list[Event]:
    def e(t, kind, text, vm="bench"):
        return Event(t, kind, vm, text, "info")

    return [
        e(0.3, "vm_domain", "rvb1-b1-bench"),
        e(1.1, "log", "domain rvb1-b1-bench started; SSH forwarded from 127.0.0.1:40000"),
        e(20.0, "log", "SSH is up after 19.7s (host key SHA256:x)"),
        e(20.0, "step_started", "0"),
        e(20.3, "step_started", "1"),
        e(20.8, "step_started", "2"),
        e(21.1, "vm_phase", "ShuttingDown"),
        e(25.0, "log", "the guest powered off"),
        e(25.0, "build_phase", "CapturingDisks", vm=""),
        e(25.2, "vm_phase", "DiskCaptured"),
    ]


PACKER_OUTPUT = [
    (0.4, "err| 2026/11/25 20:09:04 packer-builder-qemu plugin: Executing /usr/bin/qemu-system"
     "-x86_64: []string{...}"),
    (0.41, "err| 2026/11/25 20:09:04 packer-builder-qemu plugin: Started Qemu. Pid: 7256"),
    (30.0, "out| ==> qemu: Connected to SSH!"),
    (30.01, "out| ==> qemu: Provisioning with shell script: /tmp/packer-shell1"),
    (30.2, "out| ==> qemu: Uploading /tmp/blob.bin => /root/blob.bin"),
    (30.5, "out| ==> qemu: Provisioning with shell script: /tmp/packer-shell2"),
    (30.7, "out| ==> qemu: Gracefully halting virtual machine..."),
    (33.9, "err| 2026/11/25 20:09:52 packer-builder-qemu plugin: VM shut down."),
    (33.9, "out| ==> qemu: Converting hard drive..."),
    (34.05, "out| Build 'qemu' finished after 34 seconds 1 millisecond."),
]  # fmt: skip


def test_phases_of_a_rudder_run_add_up_to_its_total():
    seen = {"power_down": 23.5, "qemu_exit": 23.6, "qemu_reaped": 24.8}
    marks = rudder_marks(rudder_events(), 0.0, 25.6, seen)
    guest = GuestTiming(commands_s=0.1, sshd_age_s=4.0, step1_marker_t=20.2, checksum_ok=True)

    result = phases(marks, guest)

    parts = [k for k, label in PHASES if not label.startswith("  ")]
    parts = parts[: parts.index("total")]
    assert sum(result[k] for k in parts if k != "guest_commands") == pytest.approx(25.6)
    assert result["boot_to_ssh"] == pytest.approx(19.7)
    assert result["start_call"] == pytest.approx(0.8)
    assert result["guest_boot"] == pytest.approx(16.2 - 0.3)
    assert result["ssh_lag"] == pytest.approx(20.0 - 16.2)
    assert result["overhead"] == pytest.approx(25.6 - 19.7 - 0.1 - 0.5)
    shutdown = ["guest_shutdown", "qemu_exit", "zombie", "seen_off"]
    assert [result[k] for k in shutdown] == pytest.approx([2.4, 0.1, 1.2, 0.2])
    assert sum(result[k] for k in shutdown) == pytest.approx(result["shutdown"])
    assert result["tool_overhead"] == pytest.approx(result["overhead"] - 2.4 - 1.2)
    assert result["tool_overhead_lag"] == pytest.approx(result["tool_overhead"] + 3.8)


def test_rudders_generalization_is_split_out_of_the_last_step_and_packer_has_none():
    generalizing = Event(20.95, "log", "bench", "generalizing the guest for cloning, x", "")
    events = sorted([*rudder_events(), generalizing], key=lambda e: e.t)
    guest = GuestTiming(0.1, None, 20.2, True)

    rudder = phases(rudder_marks(events, 0.0, 25.6, {}), guest)
    packer = phases(packer_marks(PACKER_OUTPUT, 0.0, 34.1, {}), guest)

    assert rudder["generalize"] == pytest.approx(21.1 - 20.95)
    assert rudder["step_checksum"] == pytest.approx(21.1 - 20.8)
    assert phases(rudder_marks(rudder_events(), 0.0, 25.6, {}), guest)["generalize"] is None
    assert packer["generalize"] is None


def test_without_the_guest_watch_the_shutdown_is_not_split():
    marks = rudder_marks(rudder_events(), 0.0, 25.6, {})

    result = phases(marks, GuestTiming(0.1, None, 20.2, True))

    assert result["guest_shutdown"] is None
    assert result["tool_overhead"] is None
    assert result["ssh_lag"] is None
    assert result["overhead"] == pytest.approx(25.6 - 19.7 - 0.1 - 0.5)


def test_packer_output_is_cut_at_its_own_lines():
    seen = {"power_down": 33.85, "qemu_exit": 33.91, "qemu_reaped": 33.91}
    marks = packer_marks(PACKER_OUTPUT, 0.0, 34.1, seen)

    assert (marks.boot, marks.started, marks.ssh) == (0.4, 0.41, 30.0)
    assert marks.steps == (30.01, 30.2, 30.5)
    assert (marks.halt, marks.off, marks.captured) == (30.7, 33.9, 34.05)
    assert marks.power_down == 33.85
    assert marks.qemu_exit == marks.qemu_reaped == 33.9  # polled late: it happened by `off`


def test_a_power_down_outside_the_shutdown_is_ignored():
    marks = packer_marks(PACKER_OUTPUT, 0.0, 34.1, {"power_down": 12.0})

    assert marks.power_down is None


def test_a_run_without_ssh_cannot_be_cut():
    with pytest.raises(MissingMark, match="Connected to SSH"):
        packer_marks([PACKER_OUTPUT[0]], 0.0, 1.0, {})


# --- the reporter, the console watch and the tables ---------------------------------------------
def test_the_timed_reporter_stamps_each_call_and_cancels_on_interrupt():
    timeline = Timeline()
    reporter = timed_reporter_class(NullReporter, timeline)()

    reporter.vm_phase("bench", "Booting")
    reporter.log("hello", vm="bench", stream="stdout")
    assert reporter.poll() is None
    timeline.interrupted.set()

    assert [(e.kind, e.text) for e in timeline.events()] == [
        ("vm_phase", "Booting"),
        ("log", "phase Booting"),  # NullReporter logs phases; the wrapper records that too
        ("log", "hello"),
    ]
    assert reporter.poll() == "interrupted by Ctrl-C"


def test_the_guest_watch_stamps_the_power_down_and_the_end_of_qemu(tmp_path):
    console = tmp_path / "serial.log"
    # A stand-in for QEMU whose command line names the console file, as Packer's does.
    fake_qemu = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", console])
    watch = GuestWatch(lambda: [console] if console.exists() else [], str(console).encode())
    try:
        watch.start()
        console.write_bytes(b"rcK: stopping\r\n")
        time.sleep(0.5)  # the process is looked for every 10th poll
        written = time.monotonic()
        with console.open("ab") as handle:
            handle.write(b"[   22.1] reboot: Power down\r\n")
        time.sleep(0.2)
        fake_qemu.kill()
        time.sleep(0.2)  # a zombie: we are its parent and have not reaped it yet
        fake_qemu.wait(timeout=5)
        time.sleep(0.2)
    finally:
        watch.stop()
        fake_qemu.kill()
        fake_qemu.wait(timeout=5)

    seen = watch.seen
    assert written <= seen["power_down"] <= written + 0.2
    assert seen["power_down"] < seen["qemu_exit"] < seen["qemu_reaped"] - 0.1
    assert "going_down" not in seen
    assert "rcK: stopping\n" in watch.text


def test_tables_give_median_and_min_and_a_dash_for_what_was_not_measured():
    runs = [
        RunRecord("RudderVirt", i, 0.5, 0, {"total": t, "ssh_lag": None})
        for i, t in enumerate((30.0, 10.0, 20.0))
    ]

    text = text_table({"RudderVirt": runs, "Packer": []})
    markdown = markdown_table({"RudderVirt": runs, "Packer": []})

    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert total.split()[1:] == ["20.00", "10.00", "-", "-"]
    assert "| total | 20.00 | 10.00 | - | - |" in markdown
    assert "&nbsp;&nbsp;↳ SSH detection lag (tool) | - | - |" in markdown
