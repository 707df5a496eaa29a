"""An in-memory :class:`~ruddervirt.hypervisor.driver.Hypervisor` for unit tests.

Domains and networks live in dicts. It raises the same errors as the libvirt driver in the
same situations (unknown names, redefining a running domain, starting a domain whose network
is not active, console of a stopped domain, ...). State changes happen at once: ``start`` makes
a domain RUNNING, ``shutdown`` makes it SHUTOFF unless its name is in ``acpi_ignored`` (a guest
that ignores the power button, like busybox init) and not in ``agents`` (a guest whose
qemu-guest-agent answers: ``agent_ping`` says True while it runs, and ``shutdown`` goes through
the agent, whatever ACPI would do, ``fsfreeze`` freezes one filesystem, and ``guest_exec``
asks ``guests[name]``, a function of argv, what the command does; exit 0 with no output
without one). Tests can force a state with :meth:`FakeHypervisor.set_state` and inspect
``sent_keys``, ``frozen``, ``executed`` and ``calls``. Thread-safe.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.hypervisor.driver import (
    CancelCheck,
    ConsoleAddress,
    DomainFault,
    DomainInfo,
    DomainNotFound,
    DomainState,
    ExecResult,
    HypervisorError,
    InvalidState,
    NetworkInfo,
    NetworkNotFound,
    ShutdownVia,
    check_keycodes,
    check_prefix,
    poll_for_state,
)
from ruddervirt.hypervisor.fake_images import FakeImages
from ruddervirt.hypervisor.specs import DEFAULT_NAME_PREFIX, DomainSpec, NetworkSpec

_ACTIVE = frozenset({DomainState.RUNNING, DomainState.PAUSED})
FIRST_VNC_PORT = 5900
# A 1x1 black PPM: what QEMU's screendump would give for a blank screen, only smaller.
FAKE_SCREENSHOT = b"P6\n1 1\n255\n\x00\x00\x00"


@dataclass
class FakeDomain:
    """A defined domain: its spec, state and (while running) VNC port."""

    spec: DomainSpec
    state: DomainState = DomainState.SHUTOFF
    vnc_port: int | None = None
    boots: int = 0
    snapshotted: set[str] = field(default_factory=set)  # files snapshot_disks switched to
    fault: DomainFault | None = None


@dataclass
class FakeNetwork:
    """A defined network and whether it is active."""

    spec: NetworkSpec
    active: bool = False


class FakeHypervisor:
    """Dict-backed hypervisor; see the module docstring for what it simulates."""

    def __init__(self, *, name_prefix: str = DEFAULT_NAME_PREFIX) -> None:
        self.name_prefix = name_prefix
        self.domains: dict[str, FakeDomain] = {}
        self.networks: dict[str, FakeNetwork] = {}
        self.sent_keys: dict[str, list[tuple[tuple[int, ...], int]]] = {}
        self.acpi_ignored: set[str] = set()
        self.agents: set[str] = set()
        self.frozen: set[str] = set()
        self.guests: dict[str, Callable[[list[str]], ExecResult]] = {}
        self.executed: list[tuple[str, list[str]]] = []
        self.calls: list[tuple[str, str]] = []
        self.snapshots: list[tuple[str, dict[Path, Path]]] = []
        self.restore_fails: dict[str, str] = {}  # domain -> why its restore fails
        self.restored: list[tuple[str, Path]] = []  # (domain, state file) per restore
        self.clock_set: list[str] = []
        self.execs: list[tuple[str, tuple[str, ...], bytes]] = []  # (domain, argv, stdin)
        self.exec_exit_code = 0
        self._lock = threading.RLock()
        self._next_port = FIRST_VNC_PORT

    # -- helpers for tests -------------------------------------------------------------------

    def set_state(self, name: str, state: DomainState) -> None:
        """Force a domain's state (a crash, a guest powering itself off, ...)."""
        with self._lock:
            dom = self._dom(name)
            dom.state, dom.fault = state, None

    def fail(self, name: str, state: DomainState, reason: str, log: str = "") -> None:
        """Make a domain stop as on an error: ``state`` (PAUSED, CRASHED, SHUTOFF) with
        libvirt's ``reason`` in words and what QEMU's ``log`` says."""
        with self._lock:
            dom = self._dom(name)
            dom.state, dom.fault = state, DomainFault(state, reason, log)

    def _dom(self, name: str) -> FakeDomain:
        check_prefix(name, self.name_prefix)
        try:
            return self.domains[name]
        except KeyError:
            raise DomainNotFound(f"domain {name!r}: no such domain") from None

    def _net(self, name: str) -> FakeNetwork:
        check_prefix(name, self.name_prefix, "network")
        try:
            return self.networks[name]
        except KeyError:
            raise NetworkNotFound(f"network {name!r}: no such network") from None

    def _record(self, method: str, name: str) -> None:
        self.calls.append((method, name))

    # -- domains -----------------------------------------------------------------------------

    def define(self, spec: DomainSpec) -> None:
        """See :meth:`Hypervisor.define`."""
        check_prefix(spec.name, self.name_prefix)
        with self._lock:
            self._record("define", spec.name)
            existing = self.domains.get(spec.name)
            if existing is None:
                self.domains[spec.name] = FakeDomain(spec)
                return
            if existing.state in _ACTIVE:
                raise InvalidState(f"cannot redefine {spec.name!r} while it is running")
            existing.spec = spec

    def start(self, name: str) -> None:
        """See :meth:`Hypervisor.start`; fails like libvirt when a NIC's network is not active."""
        self._start(name, "start", DomainState.RUNNING)

    # -- optional, not in the Hypervisor protocol (see LibvirtHypervisor.start_paused) --------
    def start_paused(self, name: str) -> None:
        self._start(name, "start_paused", DomainState.PAUSED)

    def resume(self, name: str) -> None:
        with self._lock:
            self._record("resume", name)
            dom = self._dom(name)
            if dom.state is DomainState.PAUSED:
                dom.state, dom.fault = DomainState.RUNNING, None

    # -- optional, not in the Hypervisor protocol (see LibvirtHypervisor.snapshot_disks) -----
    def snapshot_disks(self, name: str, overlays: Mapping[Path, Path]) -> None:
        """Write each new file as a FakeImages overlay on its old one; the domain must be
        running and have every old file as a disk (``snapshots`` records each call)."""
        with self._lock:
            self._record("snapshot_disks", name)
            dom = self._running(name, "snapshot")
            disks = {str(d.path) for d in dom.spec.disks}
            missing = sorted(str(p) for p in overlays if str(p) not in disks | dom.snapshotted)
            if missing:
                raise ValueError(f"{name!r} has no disk {', '.join(missing)}")
            for old, new in overlays.items():
                FakeImages().create_overlay(old, new, "qcow2")
                dom.snapshotted.add(str(new))
            self.snapshots.append((name, dict(overlays)))

    def _start(self, name: str, method: str, state: DomainState) -> None:
        with self._lock:
            self._record(method, name)
            dom = self._dom(name)
            if dom.state in _ACTIVE:
                return
            for nic in dom.spec.nics:
                network = self.networks.get(nic.network)
                if network is None or not network.active:
                    raise HypervisorError(f"start {name!r}: network {nic.network!r} is not active")
            dom.state, dom.boots, dom.fault = state, dom.boots + 1, None
            dom.vnc_port, self._next_port = self._next_port, self._next_port + 1

    def shutdown(self, name: str) -> ShutdownVia:
        """See :meth:`Hypervisor.shutdown`."""
        with self._lock:
            self._record("shutdown", name)
            dom = self._dom(name)
            if dom.state is not DomainState.RUNNING:
                return ShutdownVia.NOTHING
            via = ShutdownVia.AGENT if name in self.agents else ShutdownVia.ACPI
            if via is ShutdownVia.AGENT or name not in self.acpi_ignored:
                dom.state, dom.vnc_port = DomainState.SHUTOFF, None
            return via

    def agent_ping(self, name: str, timeout_s: float) -> bool:
        """See :meth:`Hypervisor.agent_ping`: True for a running domain named in ``agents``."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        with self._lock:
            return self._dom(name).state is DomainState.RUNNING and name in self.agents

    def fsfreeze(self, name: str, timeout_s: float) -> int | None:
        """See :meth:`Hypervisor.fsfreeze`: one filesystem for a running domain in ``agents``
        (and the domain's name added to ``frozen``), else None."""
        if not self.agent_ping(name, timeout_s):
            return None
        with self._lock:
            self._record("fsfreeze", name)
            self.frozen.add(name)
            return 1

    def save(self, name: str, path: Path) -> None:
        """See :meth:`Hypervisor.save`: writes the domain's guest-visible machine as JSON."""
        with self._lock:
            self._record("save", name)
            dom = self._running(name, "save")
            if path.exists():
                raise HypervisorError(f"save {name!r}: {path} exists")
            path.write_text(json.dumps({"saved": name, "machine": machine_of(dom.spec)}))
            dom.state, dom.vnc_port = DomainState.SHUTOFF, None

    def restore(self, path: Path, spec: DomainSpec, *, paused: bool = False) -> None:
        """See :meth:`Hypervisor.restore`: the file must be one :meth:`save` wrote, of the
        same guest-visible machine (as libvirt's ABI check); ``restore_fails`` fails it."""
        with self._lock:
            self._record("restore", spec.name)
            dom = self._dom(spec.name)
            if dom.state in _ACTIVE:
                raise InvalidState(f"cannot restore {spec.name!r}: it is running")
            if spec.name in self.restore_fails:
                raise HypervisorError(f"restore {spec.name!r}: {self.restore_fails[spec.name]}")
            try:
                saved = json.loads(path.read_text())["machine"]
            except (OSError, ValueError, KeyError) as exc:
                raise HypervisorError(f"restore {spec.name!r}: {path}: {exc}") from exc
            if saved != machine_of(spec):
                raise HypervisorError(
                    f"restore {spec.name!r}: the domain does not match the saved machine"
                )
            dom.spec = spec
            self._start(
                spec.name, "restored", DomainState.PAUSED if paused else DomainState.RUNNING
            )
            self.restored.append((spec.name, path))

    def set_guest_time(self, name: str, timeout_s: float) -> bool:
        """See :meth:`Hypervisor.set_guest_time` (``clock_set`` lists the domains)."""
        if not self.agent_ping(name, timeout_s):
            return False
        with self._lock:
            self.clock_set.append(name)
        return True

    def guest_exec(
        self,
        name: str,
        argv: Sequence[str],
        *,
        timeout_s: float,
        max_output: int,
        stdin: bytes = b"",
    ) -> ExecResult | None:
        """See :meth:`Hypervisor.guest_exec`: None unless the domain runs and is in ``agents``;
        else ``guests[name](argv)`` (``exec_exit_code`` when none is set), its output cut to
        ``max_output``. Every call is in ``executed`` and, with its stdin, in ``execs``."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"argv must be a non-empty list of strings, got {argv!r}")
        if not self.agent_ping(name, max(timeout_s, 0.001)):
            return None
        with self._lock:
            self._record("guest_exec", name)
            self.executed.append((name, list(argv)))
            self.execs.append((name, tuple(argv), stdin))
            guest = self.guests.get(name)
        result = guest(list(argv)) if guest else ExecResult(exit_code=self.exec_exit_code)
        cut = len(result.stdout) > max_output or len(result.stderr) > max_output
        return ExecResult(
            exit_code=result.exit_code,
            stdout=result.stdout[:max_output],
            stderr=result.stderr[:max_output],
            timed_out=result.timed_out,
            signal=result.signal,
            truncated=result.truncated or cut,
        )

    def destroy(self, name: str) -> None:
        """See :meth:`Hypervisor.destroy`."""
        with self._lock:
            self._record("destroy", name)
            dom = self._dom(name)
            if dom.state in _ACTIVE:
                dom.state, dom.vnc_port = DomainState.SHUTOFF, None

    def undefine(self, name: str, *, remove_nvram: bool = True) -> None:
        """See :meth:`Hypervisor.undefine`."""
        with self._lock:
            self._record("undefine", name)
            try:
                dom = self._dom(name)
            except DomainNotFound:
                return
            if dom.state in _ACTIVE:
                raise InvalidState(f"cannot undefine {name!r} while it is running")
            del self.domains[name]

    def state(self, name: str) -> DomainState:
        """See :meth:`Hypervisor.state`."""
        with self._lock:
            try:
                return self._dom(name).state
            except DomainNotFound:
                return DomainState.ABSENT

    def fault(self, name: str) -> DomainFault | None:
        """See :meth:`Hypervisor.fault`: what :meth:`fail` set, else from the state (a
        PAUSED domain is paused on purpose unless :meth:`fail` said otherwise)."""
        with self._lock:
            try:
                dom = self._dom(name)
            except DomainNotFound:
                return DomainFault(DomainState.ABSENT, "the domain is gone")
            if dom.state in (DomainState.RUNNING, DomainState.PAUSED, DomainState.OTHER):
                return dom.fault if dom.state is DomainState.PAUSED else None
            return dom.fault or DomainFault(
                dom.state, dom.state.value.replace("shutoff", "shut off")
            )

    def wait_for_state(
        self,
        name: str,
        states: Collection[DomainState],
        timeout: float,
        cancel: CancelCheck | None = None,
    ) -> DomainState:
        """See :meth:`Hypervisor.wait_for_state` (polls every 10 ms)."""
        return poll_for_state(lambda: self.state(name), name, states, timeout, cancel, 0.01)

    def list_domains(self, prefix: str) -> list[DomainInfo]:
        """See :meth:`Hypervisor.list_domains`."""
        with self._lock:
            return [
                DomainInfo(name, dom.state, dict(dom.spec.metadata))
                for name, dom in sorted(self.domains.items())
                if name.startswith(prefix)
            ]

    def _running(self, name: str, what: str) -> FakeDomain:
        dom = self._dom(name)
        if dom.state not in _ACTIVE:
            raise InvalidState(f"{what} {name!r}: domain is not running")
        return dom

    def console_address(self, name: str) -> ConsoleAddress:
        """See :meth:`Hypervisor.console_address`."""
        with self._lock:
            dom = self._running(name, "console of")
            if dom.spec.vnc is not True:
                return ConsoleAddress(socket=dom.spec.vnc)
            return ConsoleAddress(host="127.0.0.1", port=dom.vnc_port)

    def send_keys(self, name: str, keycodes: Sequence[int], hold_ms: int = 0) -> None:
        """See :meth:`Hypervisor.send_keys`; records ``(keycodes, hold_ms)`` in ``sent_keys``."""
        keys = check_keycodes(keycodes)
        if hold_ms < 0:
            raise ValueError(f"hold_ms must be >= 0, got {hold_ms}")
        with self._lock:
            self._running(name, "send keys to")
            self.sent_keys.setdefault(name, []).append((tuple(keys), hold_ms))

    def screenshot(self, name: str) -> bytes:
        """See :meth:`Hypervisor.screenshot`; always a 1x1 black PPM."""
        with self._lock:
            self._running(name, "screenshot of")
            return FAKE_SCREENSHOT

    # -- networks ----------------------------------------------------------------------------

    def define_network(self, spec: NetworkSpec) -> None:
        """See :meth:`Hypervisor.define_network`."""
        check_prefix(spec.name, self.name_prefix, "network")
        with self._lock:
            self._record("define_network", spec.name)
            existing = self.networks.get(spec.name)
            if existing is None:
                self.networks[spec.name] = FakeNetwork(spec)
            elif existing.active:
                raise InvalidState(f"cannot redefine network {spec.name!r} while active")
            else:
                existing.spec = spec

    def start_network(self, name: str) -> None:
        """See :meth:`Hypervisor.start_network`."""
        with self._lock:
            self._record("start_network", name)
            self._net(name).active = True

    def destroy_network(self, name: str) -> None:
        """See :meth:`Hypervisor.destroy_network`."""
        with self._lock:
            self._record("destroy_network", name)
            self._net(name).active = False

    def undefine_network(self, name: str) -> None:
        """See :meth:`Hypervisor.undefine_network`."""
        with self._lock:
            self._record("undefine_network", name)
            try:
                net = self._net(name)
            except NetworkNotFound:
                return
            if net.active:
                raise InvalidState(f"cannot undefine network {name!r} while active")
            del self.networks[name]

    def list_networks(self, prefix: str) -> list[NetworkInfo]:
        """See :meth:`Hypervisor.list_networks`."""
        with self._lock:
            return [
                NetworkInfo(name, net.active, net.spec.bridge, dict(net.spec.metadata))
                for name, net in sorted(self.networks.items())
                if name.startswith(prefix)
            ]

    def network_exists(self, name: str) -> bool:
        """See :meth:`Hypervisor.network_exists`."""
        with self._lock:
            try:
                self._net(name)
            except NetworkNotFound:
                return False
            return True


def machine_of(spec: DomainSpec) -> dict:
    """The guest-visible parts of a domain (what a restore must keep), as JSON data."""
    return {
        "vcpus": spec.vcpus,
        "memory": spec.memory_bytes,
        "machine": spec.machine,
        "disks": [[d.target_bus, d.device, d.format] for d in spec.disks],
        "nics": [[n.mac, n.model, n.pci_slot] for n in spec.nics],
        "mgmt": spec.mgmt.mac if spec.mgmt is not None else None,
        "efi": spec.efi is not None,
    }
