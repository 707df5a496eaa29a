"""The libvirt implementation of :class:`~ruddervirt.hypervisor.driver.Hypervisor`.

The only module that imports ``libvirt``. Every libvirt error is translated into the errors of
``driver.py``; libvirt's habit of printing every error to stderr is switched off (the errors
reach callers as exceptions instead).

Threads: each thread (and each process, after a fork) lazily opens its own connection to the
URI, kept in a ``threading.local``. libvirt connections are thread-safe, but a private one per
worker thread means a connection broken by a libvirtd restart, or inherited across a fork by
an rq work horse, only affects its owner, and is reopened on next use (``isAlive`` check).
``close()`` closes every connection this object opened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path

import libvirt
import libvirt_qemu

from ruddervirt.hypervisor import gateway, guest_exec, qemu_log, saveimage
from ruddervirt.hypervisor.domain_xml import (
    OWNER_NS,
    build_domain_xml,
    parse_owner_metadata,
    restore_xml,
)
from ruddervirt.hypervisor.driver import (
    AGENT_PING_TIMEOUT_S,
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
from ruddervirt.hypervisor.network_xml import build_network_xml, parse_network_xml
from ruddervirt.hypervisor.specs import DEFAULT_NAME_PREFIX, DomainSpec, NetworkSpec

DEFAULT_URI = "qemu:///system"


def _ignore_libvirt_error(_ctx: object, _error: object) -> None:
    """libvirt's default handler prints every error to stderr; ours become exceptions instead."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,  # running, vCPUs idle
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.RUNNING,  # still running, shutting down
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
}

# What libvirt says when no agent can answer: none connected, not configured, not running,
# too slow, out of sync. agent_ping turns these into False.
_NO_AGENT = (
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_AGENT_UNSYNCED,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_OPERATION_INVALID,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_OPERATION_FAILED,
)
_GUEST_PING = '{"execute": "guest-ping"}'
_FSFREEZE = '{"execute": "guest-fsfreeze-freeze"}'
# libvirt's agent shutdown blocks until the guest is off (up to 60 s): it runs in a helper
# thread, and shutdown waits this long only to hear of an early failure (then ACPI).
AGENT_SHUTDOWN_GRACE_S = 0.5

_UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)


def map_state(state: int, reason: int) -> DomainState:
    """Our state for libvirt's (state, reason); a crash is CRASHED even if libvirt paused or
    stopped the guest because of it (e.g. QEMU's "emulation failure")."""
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_CRASHED:
        return DomainState.CRASHED
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_CRASHED:
        return DomainState.CRASHED
    return _STATES.get(state, DomainState.OTHER)


# Paused or shut off by an error rather than on purpose: what libvirt's reason means.
_PAUSED_FAULTS = {
    libvirt.VIR_DOMAIN_PAUSED_UNKNOWN: "paused for an unknown reason",
    libvirt.VIR_DOMAIN_PAUSED_IOERROR: "paused after an I/O error",
    libvirt.VIR_DOMAIN_PAUSED_WATCHDOG: "paused by its watchdog",
    libvirt.VIR_DOMAIN_PAUSED_CRASHED: "paused: the guest crashed",
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: "paused: a migration failed",
}
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shut off: the guest powered off",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "shut off: destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "shut off: QEMU crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "shut off: QEMU failed to start",
}


def fault_reason(state: int, reason: int) -> str | None:
    """Words for a (state, reason) that is a fault (see :meth:`Hypervisor.fault`), or None."""
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return _PAUSED_FAULTS.get(reason)
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return _SHUTOFF_REASONS.get(reason, "shut off")
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "crashed"
    return None


def _translate(exc: libvirt.libvirtError, what: str) -> HypervisorError:
    code = exc.get_error_code()
    message = f"{what}: {exc.get_error_message() or exc}"
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message)
    if code == libvirt.VIR_ERR_NO_NETWORK:
        return NetworkNotFound(message)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return InvalidState(message)
    return HypervisorError(message)


@contextlib.contextmanager
def _errors(what: str) -> Iterator[None]:
    """Turn libvirt errors raised inside the block into our typed errors."""
    try:
        yield
    except libvirt.libvirtError as exc:
        raise _translate(exc, what) from exc


def _is(exc: libvirt.libvirtError, *codes: int) -> bool:
    return exc.get_error_code() in codes


class LibvirtHypervisor:
    """Drives libvirt at ``uri``; manages only objects whose names start with ``name_prefix``."""

    def __init__(self, uri: str = DEFAULT_URI, *, name_prefix: str = DEFAULT_NAME_PREFIX) -> None:
        if not name_prefix:
            raise ValueError("name_prefix must not be empty")
        self.uri = uri
        self.name_prefix = name_prefix
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[tuple[int, libvirt.virConnect]] = []

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> libvirt.virConnect:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid() and conn.isAlive():
            return conn
        with _errors(f"cannot connect to {self.uri}"):
            conn = libvirt.open(self.uri)
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._opened.append((os.getpid(), conn))
        return conn

    def close(self) -> None:
        """Close every connection this process opened through this object (threads reopen on
        next use). Connections inherited across a fork are left alone: they are the parent's."""
        with self._lock:
            opened, self._opened = self._opened, []
        for pid, conn in opened:
            if pid == os.getpid():
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        self._local = threading.local()

    def _domain(self, name: str) -> libvirt.virDomain:
        check_prefix(name, self.name_prefix)
        with _errors(f"domain {name!r}"):
            return self._conn().lookupByName(name)

    def _network(self, name: str) -> libvirt.virNetwork:
        check_prefix(name, self.name_prefix, "network")
        with _errors(f"network {name!r}"):
            return self._conn().networkLookupByName(name)

    # -- domains -----------------------------------------------------------------------------

    def define(self, spec: DomainSpec) -> None:
        """See :meth:`Hypervisor.define`; an existing domain keeps its UUID."""
        check_prefix(spec.name, self.name_prefix)
        uuid = None
        with contextlib.suppress(DomainNotFound):
            existing = self._domain(spec.name)
            with _errors(f"define {spec.name!r}"):
                if existing.isActive():
                    raise InvalidState(f"cannot redefine {spec.name!r} while it is running")
                uuid = existing.UUIDString()
        xml = build_domain_xml(spec, uuid=uuid)
        with _errors(f"define {spec.name!r}"):
            self._conn().defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)

    def start(self, name: str) -> None:
        """See :meth:`Hypervisor.start` (also a no-op when paused)."""
        dom = self._domain(name)
        with _errors(f"start {name!r}"):
            if not dom.isActive():
                dom.create()

    # -- start_paused is optional, not in the Hypervisor protocol (the clone pipeline's) -----
    def start_paused(self, name: str) -> None:
        """Start QEMU with the guest's vCPUs stopped (see :meth:`resume`); no-op when the
        domain is already active. Starting many domains this way, then resuming them all,
        keeps booting guests from slowing down the start of the others."""
        dom = self._domain(name)
        with _errors(f"start {name!r}"):
            if not dom.isActive():
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    def resume(self, name: str) -> None:
        """Let a paused domain's vCPUs run; no-op when it is not paused."""
        dom = self._domain(name)
        with _errors(f"resume {name!r}"):
            state, _reason = dom.state()
            if state == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()

    # -- optional, not in the Hypervisor protocol (added for the step cache) ----------------
    def snapshot_disks(self, name: str, overlays: Mapping[Path, Path]) -> None:
        """Switch the running domain's disks ``overlays`` (current file -> new file) to new
        qcow2 overlays with an external disk-only snapshot (no libvirt snapshot metadata,
        atomic across the disks): QEMU flushes the old files and from then on writes only
        to the new ones, so each old file is a read-only, crash-consistent checkpoint.
        Every other disk (CD-ROMs, the seed, a floppy) is left out. ValueError when a
        path in ``overlays`` is not one of the domain's disks."""
        dom = self._domain(name)
        with _errors(f"snapshot {name!r}"):
            root = ET.fromstring(dom.XMLDesc(0))  # noqa: S314 - libvirtd's own XML
        wanted = {str(old): str(new) for old, new in overlays.items()}
        snapshot = ET.Element("domainsnapshot")
        disks = ET.SubElement(snapshot, "disks")
        found = set()
        for disk in root.iterfind("devices/disk"):
            target, source = disk.find("target"), disk.find("source")
            path = source.get("file") if source is not None else None
            dev = target.get("dev", "") if target is not None else ""
            entry = ET.SubElement(disks, "disk", name=dev)
            if path in wanted:
                entry.set("snapshot", "external")
                ET.SubElement(entry, "driver", type="qcow2")
                ET.SubElement(entry, "source", file=wanted[path])
                found.add(path)
            else:
                entry.set("snapshot", "no")
        missing = sorted(set(wanted) - found)
        if missing:
            raise ValueError(f"{name!r} has no disk {', '.join(missing)}")
        flags = (
            libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        )
        with _errors(f"snapshot {name!r}"):
            dom.snapshotCreateXML(ET.tostring(snapshot, encoding="unicode"), flags)

    def shutdown(self, name: str) -> ShutdownVia:
        """See :meth:`Hypervisor.shutdown`."""
        dom = self._domain(name)
        with _errors(f"shutdown {name!r}"):
            if not dom.isActive():
                return ShutdownVia.NOTHING
        if self.agent_ping(name, AGENT_PING_TIMEOUT_S) and _agent_shutdown(dom, name):
            return ShutdownVia.AGENT
        with _errors(f"shutdown {name!r}"):
            if dom.isActive():
                dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        return ShutdownVia.ACPI

    def agent_ping(self, name: str, timeout_s: float) -> bool:
        """See :meth:`Hypervisor.agent_ping` (libvirt counts the timeout in whole seconds)."""
        dom = self._domain(name)
        try:
            libvirt_qemu.qemuAgentCommand(dom, _GUEST_PING, max(1, math.ceil(timeout_s)), 0)
        except libvirt.libvirtError as exc:
            if _is(exc, *_NO_AGENT):
                return False
            raise _translate(exc, f"guest agent of {name!r}") from exc
        return True

    def fsfreeze(self, name: str, timeout_s: float) -> int | None:
        """See :meth:`Hypervisor.fsfreeze` (libvirt counts the timeout in whole seconds)."""
        if not self.agent_ping(name, AGENT_PING_TIMEOUT_S):
            return None
        dom = self._domain(name)
        try:
            reply = libvirt_qemu.qemuAgentCommand(dom, _FSFREEZE, max(1, math.ceil(timeout_s)), 0)
        except libvirt.libvirtError as exc:
            raise _translate(exc, f"guest agent of {name!r}: fsfreeze") from exc
        return int(json.loads(reply)["return"])

    def save(self, name: str, path: Path) -> None:
        """See :meth:`Hypervisor.save` (virDomainSave: uncompressed, as qemu.conf's default)."""
        dom = self._domain(name)
        with _errors(f"save {name!r}"):
            if not dom.isActive():
                raise InvalidState(f"cannot save {name!r}: it is not running")
            dom.save(str(path))

    def restore(self, path: Path, spec: DomainSpec, *, paused: bool = False) -> None:
        """See :meth:`Hypervisor.restore`: libvirt reads the saved state through a pipe that
        renames it for ``spec.name`` (saveimage.feed), with the domain's own XML (its UUID
        kept) checked by libvirt against the saved machine."""
        dom = self._domain(spec.name)
        with _errors(f"restore {spec.name!r}"):
            if dom.isActive():
                raise InvalidState(f"cannot restore {spec.name!r}: it is running")
            uuid = dom.UUIDString()
        try:
            xml = restore_xml(spec, uuid=uuid, saved_xml=saveimage.read(path).xml)
        except (saveimage.SaveImageError, OSError) as exc:
            raise HypervisorError(f"restore {spec.name!r}: {exc}") from exc
        flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
        try:
            with saveimage.feed(path, spec.name, uuid) as pipe, _errors(f"restore {spec.name!r}"):
                self._conn().restoreFlags(str(pipe), xml, flags)
        except (saveimage.SaveImageError, OSError) as exc:
            raise HypervisorError(f"restore {spec.name!r}: {exc}") from exc

    def set_guest_time(self, name: str, timeout_s: float) -> bool:
        """See :meth:`Hypervisor.set_guest_time` (virDomainSetTime, through the agent)."""
        if not self.agent_ping(name, timeout_s):
            return False
        dom = self._domain(name)
        now = time.time_ns()
        with _errors(f"set the clock of {name!r}"):
            dom.setTime({"seconds": now // 1_000_000_000, "nseconds": now % 1_000_000_000})
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
        """See :meth:`Hypervisor.guest_exec` (the polling is ``guest_exec.run``'s)."""
        dom = self._domain(name)

        def send(command: str, timeout: int) -> str:
            try:
                return str(libvirt_qemu.qemuAgentCommand(dom, command, timeout, 0))
            except libvirt.libvirtError as exc:
                if _is(exc, *_NO_AGENT):
                    raise guest_exec.AgentNotAnswering(str(exc)) from exc
                raise _translate(exc, f"guest agent of {name!r}") from exc

        try:
            return guest_exec.run(
                send, argv, timeout_s=timeout_s, max_output=max_output, stdin=stdin
            )
        except guest_exec.AgentNotAnswering:
            return None

    def destroy(self, name: str) -> None:
        """See :meth:`Hypervisor.destroy`."""
        dom = self._domain(name)
        with _errors(f"destroy {name!r}"):
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if not _is(exc, libvirt.VIR_ERR_OPERATION_INVALID):  # not running
                    raise

    def undefine(self, name: str, *, remove_nvram: bool = True) -> None:
        """See :meth:`Hypervisor.undefine`."""
        try:
            dom = self._domain(name)
        except DomainNotFound:
            return
        if remove_nvram:
            nvram = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        else:
            nvram = libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
        with _errors(f"undefine {name!r}"):
            try:
                if dom.isActive():
                    raise InvalidState(f"cannot undefine {name!r} while it is running")
                dom.undefineFlags(_UNDEFINE_FLAGS | nvram)
            except libvirt.libvirtError as exc:
                if not _is(exc, libvirt.VIR_ERR_NO_DOMAIN) and self._domain_exists(name):
                    raise  # not merely gone meanwhile (another cleaner got there first)

    def _domain_exists(self, name: str) -> bool:
        try:
            self._domain(name)
        except DomainNotFound:
            return False
        return True

    def state(self, name: str) -> DomainState:
        """See :meth:`Hypervisor.state`."""
        try:
            dom = self._domain(name)
            with _errors(f"state of {name!r}"):
                state, reason = dom.state()
        except DomainNotFound:
            return DomainState.ABSENT
        return map_state(state, reason)

    def fault(self, name: str) -> DomainFault | None:
        """See :meth:`Hypervisor.fault`; the log is the telling lines of QEMU's log."""
        try:
            dom = self._domain(name)
            with _errors(f"state of {name!r}"):
                state, reason = dom.state()
        except DomainNotFound:
            return DomainFault(DomainState.ABSENT, "the domain is gone")
        described = fault_reason(state, reason)
        if described is None:
            return None
        log = qemu_log.reason(qemu_log.log_dir(self.uri) / f"{name}.log")
        return DomainFault(map_state(state, reason), described, log)

    def wait_for_state(
        self,
        name: str,
        states: Collection[DomainState],
        timeout: float,
        cancel: CancelCheck | None = None,
    ) -> DomainState:
        """See :meth:`Hypervisor.wait_for_state`."""
        return poll_for_state(lambda: self.state(name), name, states, timeout, cancel)

    def list_domains(self, prefix: str) -> list[DomainInfo]:
        """See :meth:`Hypervisor.list_domains`."""
        with _errors("list domains"):
            domains = self._conn().listAllDomains(0)
        found = []
        for dom in domains:
            with contextlib.suppress(DomainNotFound):  # removed while we were listing
                if dom.name().startswith(prefix):
                    found.append(self._domain_info(dom))
        return sorted(found, key=lambda info: info.name)

    def _domain_info(self, dom: libvirt.virDomain) -> DomainInfo:
        with _errors(f"domain {dom.name()!r}"):
            state, reason = dom.state()
            try:
                owner = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, OWNER_NS, 0)
            except libvirt.libvirtError as exc:
                if not _is(exc, libvirt.VIR_ERR_NO_DOMAIN_METADATA):
                    raise
                owner = None
        metadata = parse_owner_metadata(owner) if owner else {}
        return DomainInfo(dom.name(), map_state(state, reason), metadata)

    def console_address(self, name: str) -> ConsoleAddress:
        """See :meth:`Hypervisor.console_address`."""
        dom = self._domain(name)
        with _errors(f"console of {name!r}"):
            if not dom.isActive():
                raise InvalidState(f"{name!r} is not running: no console")
            xml = dom.XMLDesc(0)
        return _vnc_address(name, ET.fromstring(xml))  # noqa: S314 - libvirtd's own XML

    def send_keys(self, name: str, keycodes: Sequence[int], hold_ms: int = 0) -> None:
        """See :meth:`Hypervisor.send_keys`."""
        keys = check_keycodes(keycodes)
        if hold_ms < 0:
            raise ValueError(f"hold_ms must be >= 0, got {hold_ms}")
        dom = self._domain(name)
        with _errors(f"send keys to {name!r}"):
            dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, hold_ms, keys, len(keys), 0)

    def screenshot(self, name: str) -> bytes:
        """See :meth:`Hypervisor.screenshot`."""
        dom = self._domain(name)
        conn = self._conn()
        chunks: list[bytes] = []
        with _errors(f"screenshot of {name!r}"):
            stream = conn.newStream(0)
            try:
                dom.screenshot(stream, 0, 0)
                stream.recvAll(lambda _stream, data, sink: sink.append(data), chunks)
                stream.finish()
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return b"".join(chunks)

    # -- networks ----------------------------------------------------------------------------

    def define_network(self, spec: NetworkSpec) -> None:
        """See :meth:`Hypervisor.define_network`; an existing network keeps its UUID."""
        check_prefix(spec.name, self.name_prefix, "network")
        uuid = None
        with contextlib.suppress(NetworkNotFound):
            existing = self._network(spec.name)
            with _errors(f"define network {spec.name!r}"):
                if existing.isActive():
                    raise InvalidState(f"cannot redefine network {spec.name!r} while active")
                uuid = existing.UUIDString()
        with _errors(f"define network {spec.name!r}"):
            self._conn().networkDefineXML(build_network_xml(spec, uuid=uuid))

    def start_network(self, name: str) -> None:
        """See :meth:`Hypervisor.start_network`; also (re)starts a managed network's gateway
        (see ``gateway.py``), so calling it on an active network repairs a dead gateway."""
        net = self._network(name)
        with _errors(f"start network {name!r}"):
            if not net.isActive():
                net.create()
            spec = parse_network_xml(net.XMLDesc(0))
        try:
            gateway.ensure(spec)
        except gateway.GatewayError as exc:
            raise HypervisorError(f"start network {name!r}: {exc}") from exc

    def destroy_network(self, name: str) -> None:
        """See :meth:`Hypervisor.destroy_network`; stops a managed network's gateway first."""
        net = self._network(name)
        with _errors(f"destroy network {name!r}"):
            spec = parse_network_xml(net.XMLDesc(0))
        try:
            gateway.stop(spec)
        except gateway.GatewayError as exc:
            raise HypervisorError(f"destroy network {name!r}: {exc}") from exc
        with _errors(f"destroy network {name!r}"):
            if net.isActive():
                net.destroy()

    def undefine_network(self, name: str) -> None:
        """See :meth:`Hypervisor.undefine_network`."""
        try:
            net = self._network(name)
        except NetworkNotFound:
            return
        with _errors(f"undefine network {name!r}"):
            try:
                if net.isActive():
                    raise InvalidState(f"cannot undefine network {name!r} while active")
                net.undefine()
            except libvirt.libvirtError:
                # Two cleaners at once (a build's own cleanup and reconcile): the loser
                # sees the other's half-done removal ("cannot remove config file").
                if self._network_exists(name):
                    raise

    def _network_exists(self, name: str) -> bool:
        try:
            self._network(name)
        except NetworkNotFound:
            return False
        return True

    def list_networks(self, prefix: str) -> list[NetworkInfo]:
        """See :meth:`Hypervisor.list_networks`."""
        with _errors("list networks"):
            networks = self._conn().listAllNetworks(0)
        found = []
        for net in networks:
            with contextlib.suppress(NetworkNotFound):
                if net.name().startswith(prefix):
                    found.append(self._network_info(net))
        return sorted(found, key=lambda info: info.name)

    def _network_info(self, net: libvirt.virNetwork) -> NetworkInfo:
        with _errors(f"network {net.name()!r}"):
            root = ET.fromstring(net.XMLDesc(0))  # noqa: S314 - libvirtd's own XML
            active = bool(net.isActive())
        bridge = root.find("bridge")
        bridge_name = bridge.get("name") if bridge is not None else None
        return NetworkInfo(net.name(), active, bridge_name, parse_owner_metadata(root))

    def network_exists(self, name: str) -> bool:
        """See :meth:`Hypervisor.network_exists`."""
        try:
            self._network(name)
        except NetworkNotFound:
            return False
        return True


def _agent_shutdown(dom: libvirt.virDomain, name: str) -> bool:
    """Send guest-shutdown through the agent; False when libvirt refused it at once (the
    agent went away since it answered), True when it was accepted or is still under way."""
    failed, done = threading.Event(), threading.Event()

    def send() -> None:
        try:
            dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
        except libvirt.libvirtError:
            failed.set()
        finally:
            done.set()

    threading.Thread(target=send, name=f"agent-shutdown-{name}", daemon=True).start()
    done.wait(AGENT_SHUTDOWN_GRACE_S)
    return not failed.is_set()


def _vnc_address(name: str, root: ET.Element) -> ConsoleAddress:
    """Read the VNC listener out of a running domain's live XML."""
    graphics = root.find("./devices/graphics[@type='vnc']")
    if graphics is None:
        raise HypervisorError(f"{name!r} has no VNC console")
    listen = graphics.find("listen")
    if listen is not None and listen.get("type") == "socket":
        return ConsoleAddress(socket=Path(listen.get("socket", "")))
    port = int(graphics.get("port", "-1"))
    if port <= 0:
        raise HypervisorError(f"{name!r} has no VNC port allocated")
    host = graphics.get("listen") or (listen.get("address") if listen is not None else None)
    return ConsoleAddress(host=host or "127.0.0.1", port=port)
