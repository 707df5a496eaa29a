"""The hypervisor interface the build and clone pipelines program against.

``LibvirtHypervisor`` (libvirt_driver.py) drives real VMs; ``FakeHypervisor`` (fake.py) keeps
them in dicts for unit tests. Both raise the errors defined here and nothing else for
hypervisor-side failures (``ValueError`` for bad arguments).

Name prefix: a driver is created with a prefix (default ``rv-``) and refuses to define,
change or remove any domain or network whose name lacks it, so RudderVirt can never touch
VMs or networks it does not own (``default``, an admin's VMs).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ruddervirt.hypervisor.specs import DomainSpec, NetworkSpec

MAX_SEND_KEYS = 16  # libvirt's VIR_DOMAIN_SEND_KEY_MAX_KEYS
# wait_for_state's polling period. Each poll is two cheap libvirt calls (lookup + state); the
# period is the lag between a VM stopping and a build noticing it (half of it on average).
POLL_INTERVAL_S = 0.1
# How long a shutdown waits for the guest agent's answer to guest-ping before it falls back to
# the ACPI button: an agent that answers at all answers within milliseconds.
AGENT_PING_TIMEOUT_S = 2.0

CancelCheck = Callable[[], bool]


class HypervisorError(Exception):
    """A hypervisor operation failed."""


class DomainNotFound(HypervisorError):
    """No domain with that name exists."""


class NetworkNotFound(HypervisorError):
    """No network with that name exists."""


class InvalidState(HypervisorError):
    """The operation is not possible in the object's current state (e.g. redefine while running)."""


class WaitTimedOut(HypervisorError):
    """``wait_for_state`` gave up: the domain did not reach a wanted state in time."""


class WaitCancelled(HypervisorError):
    """``wait_for_state`` stopped because its cancel check returned True."""


class DomainState(enum.Enum):
    """A domain's state, simplified from libvirt's (running-but-blocked is RUNNING, etc.)."""

    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    ABSENT = "absent"
    OTHER = "other"


class ShutdownVia(enum.Enum):
    """How ``shutdown`` asked the guest to power off."""

    AGENT = "agent"  # qemu-guest-agent's guest-shutdown (the agent answered guest-ping)
    ACPI = "acpi"  # the ACPI power button (no agent answered)
    NOTHING = "nothing"  # the domain was not running


@dataclass(frozen=True)
class DomainFault:
    """Why a domain is not running by itself: its ``state`` now, libvirt's ``reason`` in
    words ("paused after an I/O error") and what QEMU's log says of it (``log``, may be empty:
    "KVM internal error. Suberror: 1 / emulation failure")."""

    state: DomainState
    reason: str
    log: str = ""

    def describe(self) -> str:
        return f"{self.reason}; QEMU says: {self.log}" if self.log else self.reason


@dataclass(frozen=True)
class ExecResult:
    """What a command run through the guest agent did: its exit status (None when it was
    killed: by a signal, or by ``guest_exec`` after its timeout), the start of its stdout and
    stderr, and whether either was cut (``truncated``)."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    timed_out: bool = False
    signal: int | None = None
    truncated: bool = False


@dataclass(frozen=True)
class DomainInfo:
    """One domain as listed: its name, state and owner metadata tags."""

    name: str
    state: DomainState
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkInfo:
    """One network as listed."""

    name: str
    active: bool
    bridge: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsoleAddress:
    """Where a running domain's VNC server listens: ``host``:``port`` or the unix ``socket``."""

    host: str | None = None
    port: int | None = None
    socket: Path | None = None


@runtime_checkable
class Hypervisor(Protocol):
    """Everything the pipelines ask of a hypervisor. Names are full domain/network names."""

    def define(self, spec: DomainSpec) -> None:
        """Create or replace the persistent definition. Raises InvalidState if it is running."""

    def start(self, name: str) -> None:
        """Boot a defined domain; no-op when already running."""

    def shutdown(self, name: str) -> ShutdownVia:
        """Ask the guest to power off: through its qemu-guest-agent when one answers
        guest-ping (within AGENT_PING_TIMEOUT_S), else with the ACPI power button. Returns
        without waiting for the guest to go off, saying how it asked; NOTHING (and no
        request) when the domain is not running."""

    def agent_ping(self, name: str, timeout_s: float) -> bool:
        """Whether the guest's qemu-guest-agent answers guest-ping within ``timeout_s``.
        False, never an error, when it cannot: the domain is not running, has no agent
        channel, or no agent is connected or answering. DomainNotFound when absent."""

    def fsfreeze(self, name: str, timeout_s: float) -> int | None:
        """Freeze the guest's filesystems through its qemu-guest-agent
        (guest-fsfreeze-freeze: dirty data flushed, writes held), so a disk read or a plug
        pulled next finds them consistent; the number frozen. None, never an error, when no
        agent answers within ``timeout_s`` (as agent_ping). HypervisorError when the agent
        answers but cannot freeze (e.g. a guest without freeze support). DomainNotFound
        when absent. Nothing thaws them but guest-fsfreeze-thaw or the next boot."""

    def save(self, name: str, path: Path) -> None:
        """Write the running (or paused) domain's memory and device state to the new file
        ``path`` and stop it (its definition stays; its disks are no longer written): a
        later :meth:`restore` resumes the guest exactly there. InvalidState when it is not
        running; DomainNotFound when absent."""

    def restore(self, path: Path, spec: DomainSpec, *, paused: bool = False) -> None:
        """Run the defined, shut-off domain ``spec.name`` from the state :meth:`save` wrote
        to ``path``, with ``spec`` as its machine: its host side (name, disk files,
        networks, ports) may differ from the saved domain's, its guest-visible side (CPU,
        memory, devices, MACs) may not (HypervisorError, as libvirt's ABI check says).
        ``path`` is only read: many domains may restore from one file, at once. Running, or
        with stopped vCPUs when ``paused`` (then :meth:`resume`)."""

    def resume(self, name: str) -> None:
        """Let a paused domain's vCPUs run; no-op when it is not paused."""

    def set_guest_time(self, name: str, timeout_s: float) -> bool:
        """Set the guest's clock to the host's through its qemu-guest-agent (guest-set-time);
        False, never an error, when no agent answers within ``timeout_s`` (as agent_ping)."""

    def guest_exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        timeout_s: float,
        max_output: int,
        stdin: bytes = b"",
    ) -> ExecResult | None:
        """Run ``argv`` (a program and its arguments, never a shell string) in the guest
        through its qemu-guest-agent, ``stdin`` fed to it: guest-exec, then guest-exec-status
        polled until it exits or ``timeout_s`` passes (then the agent kills it and
        ``timed_out`` is set).
        Keeps at most ``max_output`` bytes of stdout and of stderr. None, never an error,
        when no agent answers (as agent_ping). HypervisorError when the agent answers but
        refuses (guest-exec disabled in the guest, no such program). DomainNotFound when
        absent."""

    def destroy(self, name: str) -> None:
        """Pull the plug; no error when already off. DomainNotFound when absent."""

    def undefine(self, name: str, *, remove_nvram: bool = True) -> None:
        """Remove the definition (and its UEFI vars unless told not to); no error when absent.
        Raises InvalidState while running (destroy first)."""

    def state(self, name: str) -> DomainState:
        """The current state; ABSENT when no such domain exists (never raises DomainNotFound)."""

    def fault(self, name: str) -> DomainFault | None:
        """Why ``name`` is not running, for a caller that expects it to run (waiting for its
        guest): None while it runs or was paused on purpose (by a person, for a snapshot or a
        migration, or started paused); a fault when it is paused by an error (I/O, watchdog,
        a crash such as KVM's "emulation failure"), crashed, shut off or absent."""

    def wait_for_state(
        self,
        name: str,
        states: Collection[DomainState],
        timeout: float,
        cancel: CancelCheck | None = None,
    ) -> DomainState:
        """Poll until the state is one of ``states`` and return it. Raises WaitTimedOut /
        WaitCancelled; DomainNotFound if the domain vanishes and ABSENT is not wanted."""

    def list_domains(self, prefix: str) -> list[DomainInfo]:
        """All domains (running or not) whose name starts with ``prefix``, sorted by name."""

    def console_address(self, name: str) -> ConsoleAddress:
        """The VNC address of a running domain. Raises InvalidState when it is not running."""

    def send_keys(self, name: str, keycodes: Sequence[int], hold_ms: int = 0) -> None:
        """Press ``keycodes`` (Linux input codes, 1-16 at once: a chord) for ``hold_ms``
        (0: hypervisor default) and release them."""

    def screenshot(self, name: str) -> bytes:
        """The console picture of a running domain (PNG or PPM bytes)."""

    def define_network(self, spec: NetworkSpec) -> None:
        """Create or replace a network definition. Raises InvalidState if it is active."""

    def start_network(self, name: str) -> None:
        """Activate a network; no-op when already active."""

    def destroy_network(self, name: str) -> None:
        """Deactivate a network; no error when inactive. NetworkNotFound when absent."""

    def undefine_network(self, name: str) -> None:
        """Remove a network definition; no error when absent. InvalidState while active."""

    def list_networks(self, prefix: str) -> list[NetworkInfo]:
        """All networks whose name starts with ``prefix``, sorted by name."""

    def network_exists(self, name: str) -> bool:
        """Whether a network (active or not) with that name exists."""


def check_keycodes(keycodes: Sequence[int]) -> list[int]:
    """Validate a key chord for ``send_keys`` (1-16 non-negative ints) and return it as a list."""
    keys = list(keycodes)
    if not 1 <= len(keys) <= MAX_SEND_KEYS:
        raise ValueError(f"send 1 to {MAX_SEND_KEYS} keys at once, got {len(keys)}")
    if not all(isinstance(k, int) and 0 <= k < 0x300 for k in keys):
        raise ValueError(f"keycodes must be Linux input key codes, got {keys}")
    return keys


def check_prefix(name: str, prefix: str, what: str = "domain") -> None:
    """Refuse to manage a ``what`` whose name lacks the driver's prefix (see module docstring)."""
    if not name.startswith(prefix):
        raise ValueError(f"{what} {name!r} does not start with the managed prefix {prefix!r}")


def poll_for_state(
    get_state: Callable[[], DomainState],
    name: str,
    states: Collection[DomainState],
    timeout: float,
    cancel: CancelCheck | None = None,
    interval: float = POLL_INTERVAL_S,
) -> DomainState:
    """The shared loop behind ``wait_for_state`` (see the Protocol for the contract)."""
    wanted = frozenset(states)
    deadline = time.monotonic() + timeout
    while True:
        current = get_state()
        if current in wanted:
            return current
        if current is DomainState.ABSENT:
            raise DomainNotFound(f"domain {name!r} disappeared while waiting for {_names(wanted)}")
        if cancel is not None and cancel():
            raise WaitCancelled(f"waiting for {name!r} to be {_names(wanted)} was cancelled")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimedOut(
                f"{name!r} is still {current.value} after {timeout:g} s, wanted {_names(wanted)}"
            )
        time.sleep(min(interval, remaining))


def _names(states: Collection[DomainState]) -> str:
    return "/".join(sorted(state.value for state in states))
