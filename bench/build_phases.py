"""From one build's timestamps to its phases, the same way for both tools.

A run is cut at these instants (host ``time.monotonic()``):

    start     the tool is asked to build (RudderVirt: submit; Packer: the process starts)
    boot      right before the hypervisor starts the VM (libvirt create / QEMU exec)
    ssh       the first authenticated SSH session exists
    steps     each provisioner starts (3 of them)
    halt      the shutdown command is sent
    off       the tool sees the VM off
    captured  the output disk is written
    end       the tool is done (RudderVirt: the call returns; Packer: the process exits)

Consecutive instants give phases that add up to the total exactly. Finer instants split
some of them (None when not seen):

    started      the start call returned (libvirt create) / QEMU was spawned (Packer)
    sshd_up      the guest's SSH server started (the guest's own clock, bench.build_recipe)
    generalize   RudderVirt began generalizing the guest for clones (after the last step)
    power_down   the guest's kernel printed "reboot: Power down" (bench.build_watch)
    qemu_exit    QEMU's process ended (a zombie, or gone)
    qemu_reaped  its parent reaped it (libvirt's QEMU is a child of PID 1; Packer's, of Packer)
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.build_recipe import GuestTiming
from bench.build_timing import Event
from bench.build_watch import POLL_S

# (key, label) in table order; indented labels are parts of the row above them.
PHASES: tuple[tuple[str, str], ...] = (
    ("prepare", "prepare (source, disk, seed, define)"),
    ("boot_to_ssh", "boot → first SSH session"),
    ("start_call", "  VM start call (libvirt create / QEMU spawn)"),
    ("guest_boot", "  VM start → sshd running (guest clock)"),
    ("ssh_lag", "  SSH detection lag (tool)"),
    ("handover", "SSH session → first step"),
    ("step_shell", "step 1: shell (host view)"),
    ("step_upload", "step 2: 1 MiB upload (host view)"),
    ("step_checksum", "step 3: sha256sum (host view)"),
    ("generalize", "  of which: generalizing for clones (RudderVirt only)"),
    ("guest_commands", "commands' own run time (guest clock)"),
    ("shutdown", "shutdown (command → VM seen off)"),
    ("guest_shutdown", "  guest: command → kernel power-down"),
    ("qemu_exit", "  host: power-down → QEMU exited"),
    ("zombie", "  host: QEMU exited → reaped by its parent"),
    ("seen_off", "  host: reaped → VM seen off"),
    ("capture", "capture (VM off → disk written)"),
    ("finish", "finish (cleanup, templates / exit)"),
    ("total", "total"),
    ("overhead", "overhead = total - boot→SSH - commands - upload"),
    ("tool_overhead", "tool overhead = overhead - guest shutdown - zombie wait"),
    ("tool_overhead_lag", "tool overhead + SSH detection lag"),
)


@dataclass(frozen=True)
class Marks:
    start: float
    boot: float
    ssh: float
    steps: tuple[float, float, float]
    halt: float
    off: float
    captured: float
    end: float
    started: float | None = None
    generalize: float | None = None
    power_down: float | None = None
    qemu_exit: float | None = None
    qemu_reaped: float | None = None


class MissingMark(ValueError):
    """A run's output lacks an instant we cut at (the tool changed, or the run failed)."""


def _span(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def phases(marks: Marks, guest: GuestTiming) -> dict[str, float | None]:
    s1, s2, s3 = marks.steps
    sshd_up = None if guest.sshd_age_s is None else guest.step1_marker_t - guest.sshd_age_s
    result: dict[str, float | None] = {
        "prepare": marks.boot - marks.start,
        "boot_to_ssh": marks.ssh - marks.boot,
        "start_call": _span(marks.boot, marks.started),
        "guest_boot": _span(marks.boot, sshd_up),
        "ssh_lag": _span(sshd_up, marks.ssh),
        "handover": s1 - marks.ssh,
        "step_shell": s2 - s1,
        "step_upload": s3 - s2,
        "step_checksum": marks.halt - s3,
        "generalize": _span(marks.generalize, marks.halt),
        "guest_commands": guest.commands_s,
        "shutdown": marks.off - marks.halt,
        "guest_shutdown": _span(marks.halt, marks.power_down),
        "qemu_exit": _span(marks.power_down, marks.qemu_exit),
        "zombie": _span(marks.qemu_exit, marks.qemu_reaped),
        "seen_off": _span(marks.qemu_reaped, marks.off),
        "capture": marks.captured - marks.off,
        "finish": marks.end - marks.captured,
        "total": marks.end - marks.start,
    }
    overhead = marks.end - marks.start - (marks.ssh - marks.boot) - guest.commands_s - (s3 - s2)
    result["overhead"] = overhead
    guest_shutdown, zombie = result["guest_shutdown"], result["zombie"]
    tool = None if guest_shutdown is None or zombie is None else overhead - guest_shutdown - zombie
    result["tool_overhead"] = tool
    lag = result["ssh_lag"]
    result["tool_overhead_lag"] = None if tool is None or lag is None else tool + lag
    return result


def _within(seen: dict[str, float], key: str, low: float, high: float) -> float | None:
    """``seen[key]`` when it lies in [low, high]; a mark up to two polls after ``high`` was
    polled late (bench.build_watch.POLL_S) and means ``high``."""
    t = seen.get(key)
    if t is None or not low <= t <= high + 2 * POLL_S:
        return None
    return min(t, high)


def _shutdown_marks(seen: dict[str, float], halt: float, off: float) -> dict[str, float | None]:
    power_down = _within(seen, "power_down", halt, off)
    low = power_down if power_down is not None else halt
    qemu_exit = _within(seen, "qemu_exit", low, off)
    reaped = _within(seen, "qemu_reaped", qemu_exit if qemu_exit is not None else low, off)
    return {"power_down": power_down, "qemu_exit": qemu_exit, "qemu_reaped": reaped}


# --- RudderVirt ------------------------------------------------------------------------
def _first(events: list[Event], kind: str, text: str | None = None, after: float = 0.0) -> float:
    for event in events:
        if event.kind == kind and event.t >= after and (text is None or event.text == text):
            return event.t
    raise MissingMark(f"no {kind} event {text or ''} in the RudderVirt timeline")


def _first_log(events: list[Event], prefix: str, after: float = 0.0) -> float:
    for event in events:
        if event.kind == "log" and event.t >= after and event.text.startswith(prefix):
            return event.t
    raise MissingMark(f"no log line starting with {prefix!r} in the RudderVirt timeline")


GENERALIZING = "generalizing the guest for cloning"  # ruddervirt.engine.generalize


def _optional_log(events: list[Event], prefix: str, after: float) -> float | None:
    try:
        return _first_log(events, prefix, after)
    except MissingMark:
        return None


def rudder_marks(events: list[Event], start: float, end: float, seen: dict[str, float]) -> Marks:
    """Cut a RudderVirt run (events recorded by bench.build_timing.TimedMixin)."""
    boots = [e.t for e in events if e.kind == "vm_domain"]
    if not boots:
        raise MissingMark("the VM was never defined")
    boot = boots[-1]  # the last attempt (a port clash makes the engine retry)
    halt = _first(events, "vm_phase", "ShuttingDown", boot)
    try:
        off = _first_log(events, "the guest powered off", halt)
    except MissingMark:  # forced off: the capture phase follows at once
        off = _first(events, "build_phase", "CapturingDisks", halt)
    return Marks(
        start=start,
        boot=boot,
        ssh=_first_log(events, "SSH is up", boot),
        steps=tuple(_first(events, "step_started", str(i), boot) for i in range(3)),  # type: ignore[arg-type]
        halt=halt,
        off=off,
        captured=_first(events, "vm_phase", "DiskCaptured", off),
        end=end,
        started=_first_log(events, "domain ", boot),  # "domain NAME started; SSH forwarded..."
        generalize=_optional_log(events, GENERALIZING, boot),
        **_shutdown_marks(seen, halt, off),
    )


def rudder_output(events: list[Event]) -> list[tuple[float, str]]:
    """The guest's output lines (and every other log line) with their times."""
    return [(e.t, e.text) for e in events if e.kind == "log"]


# --- Packer ----------------------------------------------------------------------------
# Substrings of Packer 1.6.6 output (stdout: its UI; stderr: PACKER_LOG=1).
PACKER_BOOT = "Executing /usr/bin/qemu-system"
PACKER_STARTED = "Started Qemu. Pid"
PACKER_SSH = "Connected to SSH!"
PACKER_SHELL = "==> qemu: Provisioning with shell script"
PACKER_UPLOAD = "==> qemu: Uploading "
PACKER_HALT = "Gracefully halting virtual machine"
PACKER_OFF = "VM shut down."
PACKER_CAPTURED = "Build 'qemu' finished"


def _packer_first(lines: list[tuple[float, str]], needle: str, after: float = 0.0) -> float:
    for t, text in lines:
        if t >= after and needle in text:
            return t
    raise MissingMark(f"Packer never printed {needle!r}")


def packer_marks(
    lines: list[tuple[float, str]], start: float, end: float, seen: dict[str, float]
) -> Marks:
    """Cut a Packer run from its output lines, each stamped when it reached us."""
    boot = _packer_first(lines, PACKER_BOOT)
    ssh = _packer_first(lines, PACKER_SSH, boot)
    s1 = _packer_first(lines, PACKER_SHELL, ssh)
    s2 = _packer_first(lines, PACKER_UPLOAD, s1)
    s3 = _packer_first(lines, PACKER_SHELL, s2)
    halt = _packer_first(lines, PACKER_HALT, s3)
    off = _packer_first(lines, PACKER_OFF, halt)
    return Marks(
        start=start,
        boot=boot,
        ssh=ssh,
        steps=(s1, s2, s3),
        halt=halt,
        off=off,
        captured=_packer_first(lines, PACKER_CAPTURED, off),
        end=end,
        started=_packer_first(lines, PACKER_STARTED, boot),
        **_shutdown_marks(seen, halt, off),
    )
