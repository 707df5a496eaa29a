"""Typing a VM's bootCommand into its console through the hypervisor's send-key.

The command (the manifest's strings, joined) has `{{ .HTTPIP }}` / `{{ .HTTPPort }}`
substituted, is tokenized with the grammar of ruddervirt.guest.bootcommand and turned into
key events. `plan` groups the events into segments: one per line typed (ending at `<enter>`)
and one per wait, each with a readable label, so the build log shows what is being typed
as it happens ("boot command: typing install url=http://10.77.0.1:41234/answers<enter>").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.guest import bootcommand as bc
from ruddervirt.hypervisor.driver import HypervisorError

TEMPLATE_MARK = "{{"


@dataclass(frozen=True)
class Typing:
    """Key events sent one after another, and how the log shows them."""

    label: str
    events: tuple[bc.KeyEvent, ...] = ()


@dataclass(frozen=True)
class Pause:
    seconds: float


Segment = Typing | Pause


def uses_http(commands: Sequence[str]) -> bool:
    """Whether the command refers to the build's HTTP server (any `{{ ... }}`)."""
    return any(TEMPLATE_MARK in command for command in commands)


def prepare(commands: Sequence[str], http_ip: str | None, http_port: int | None) -> str:
    """The whole command with the HTTP address substituted. BootCommandError for unknown
    templates; BuildError when it uses the HTTP server but the VM has none to reach."""
    text = "".join(commands)
    if http_ip is None or http_port is None:
        if TEMPLATE_MARK in text:
            bc.substitute(text, "192.0.2.1", 1)  # a template that is plain wrong says so first
            raise BuildError(
                "the bootCommand uses {{ .HTTPIP }}/{{ .HTTPPort }}, but this VM has no HTTP "
                "server to reach: declare `httpDirectory` and give the VM a NIC on a managed "
                "subnet"
            )
        return text
    return bc.substitute(text, http_ip, http_port)


def _label(token: bc.Token) -> str:
    if isinstance(token, bc.Text):
        return {"\n": "<enter>", "\t": "<tab>"}.get(token.char, token.char)
    if isinstance(token, bc.Key):
        return f"<{token.name}>"
    if isinstance(token, bc.Modifier):
        return f"<{token.name}{'On' if token.on else 'Off'}>"
    return ""


def _ends_line(token: bc.Token) -> bool:
    return (isinstance(token, bc.Key) and token.name in ("enter", "return")) or (
        isinstance(token, bc.Text) and token.char == "\n"
    )


def plan(text: str) -> list[Segment]:
    """The segments of a substituted command. Raises BootCommandError."""
    tokens = bc.tokenize(text)
    # key_events gives one event per token, except modifiers (they only change later chords).
    events = iter(bc.key_events(tokens))
    segments: list[Segment] = []
    label: list[str] = []
    pending: list[bc.KeyEvent] = []

    def flush() -> None:
        if label or pending:
            segments.append(Typing("".join(label), tuple(pending)))
            label.clear()
            pending.clear()

    for token in tokens:
        if isinstance(token, bc.Wait):
            flush()
            wait = next(events)
            assert isinstance(wait, bc.WaitEvent)
            segments.append(Pause(wait.seconds))
            continue
        label.append(_label(token))
        if not isinstance(token, bc.Modifier):
            key = next(events)
            assert isinstance(key, bc.KeyEvent)
            pending.append(key)
        if _ends_line(token):
            flush()
    flush()
    return segments


def plan_for(vm, http_ip: str | None, http_port: int | None) -> list[Segment]:
    """The segments of `vm`'s bootCommand; BuildError (naming the VM) when it cannot be typed."""
    try:
        return plan(prepare(vm.boot_command, http_ip, http_port))
    except bc.BootCommandError as exc:
        raise BuildError(f"VM {vm.name}: bootCommand: {exc}") from exc
    except BuildError as exc:
        raise BuildError(f"VM {vm.name}: {exc}") from exc


def type_segments(
    segments: Sequence[Segment],
    *,
    send: Callable[[tuple[int, ...]], None],
    wait: Callable[[float], bool],
    log: Callable[[str], None],
    interval_s: float,
) -> None:
    """Type `segments`: `send` one chord, then `wait(interval_s)`. `wait` returns True when
    the build was stopped meanwhile; BuildCancelled is raised then."""
    for segment in segments:
        if isinstance(segment, Pause):
            log(f"boot command: waiting {segment.seconds:g}s")
            if wait(segment.seconds):
                raise BuildCancelled("stopped while typing the boot command")
            continue
        log(f"boot command: typing {segment.label}")
        for event in segment.events:
            send(event.keycodes)
            if wait(interval_s):
                raise BuildCancelled("stopped while typing the boot command")


def type_boot_command(runner, segments: Sequence[Segment]) -> None:
    """Type `segments` into the runner's VM console at the configured pace, logging each
    line as it is typed. BuildCancelled when the build is stopped meanwhile."""
    keys = sum(len(s.events) for s in segments if isinstance(s, Typing))
    waits = sum(s.seconds for s in segments if isinstance(s, Pause))
    pace = runner.config.boot_key_interval_s
    runner.log(
        f"typing the boot command: {keys} keys, {waits:g}s of waits, {pace * 1000:g} ms per key"
    )
    started = time.monotonic()
    try:
        type_segments(
            segments,
            send=lambda codes: runner.hv.send_keys(
                runner.domain, list(codes), runner.config.boot_key_hold_ms
            ),
            wait=runner.stopper.wait,
            log=runner.log,
            interval_s=pace,
        )
    except BuildCancelled as exc:
        raise BuildCancelled(runner.stopper.reason or str(exc)) from exc
    except HypervisorError as exc:
        raise BuildError(f"VM {runner.vm.name}: could not type the boot command: {exc}") from exc
    runner.log(f"boot command typed in {time.monotonic() - started:.1f}s")
