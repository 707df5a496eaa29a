"""The clone pipeline: a running copy of a whole module version, for one student.

Plain Python (no Django): the portal's clone services turn database rows into a
:class:`CloneRequest` and record what these functions return.

A clone of key ``c12`` gets, for every template VM:

* disks: qcow2 overlays backed by the template's disks (linked clone: a few hundred KiB at
  creation), or full independent copies (``full_copy``);
* the version's CPU, memory, disk buses, NIC models, PCI slots, MAC and IP addresses, and
  firmware (the build's OVMF loader and a copy of the NVRAM it captured), so the guest sees
  exactly the machine the build captured: every domain comes from the version's record
  (ruddervirt.spec.VersionSpec) through ruddervirt.spec.machine_spec;
* the same management NIC the build had (QEMU user-mode, ``restrict=on``, same MAC, SSH
  forwarded from a loopback port), so guests see the same interfaces as in the build;
* a domain named ``<prefix>c12-<vm>`` carrying ``kind=clone, clone=c12`` metadata;
* for a VM built with ``cloudInit``, a NoCloud seed of its own in the clone's folder (the
  seed drive the build used): a new ``instance-id`` (the domain's name and a random part),
  the VM's name as hostname, the network config rendered from the version's NIC records and
  topology (the same static addresses, the instructor's networkData, the management NIC as
  the build had it) and a user-data that provisions nothing, so that the generalized
  template boots as a new instance with its own machine-id and SSH host keys;

and one network per subnet named ``<prefix>c12-<subnet>``: private to the clone (the
hypervisor layer keeps the gateway of same-CIDR networks apart), so no clone reaches another.

Failures raise :class:`CloneError` with a message for the instructor; a failed
:func:`create_clone` removes whatever it made.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ruddervirt.engine import cleanup, clone_seed, efi, identity
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.topology import NicPlan, Topology, network_name, networks_for
from ruddervirt.engine.vm import free_loopback_port
from ruddervirt.hypervisor import disks as qimg
from ruddervirt.hypervisor.driver import (
    DomainNotFound,
    DomainState,
    HypervisorError,
    ShutdownVia,
    WaitTimedOut,
)
from ruddervirt.hypervisor.seed import seed_drive
from ruddervirt.hypervisor.specs import DomainSpec
from ruddervirt.spec import (
    Placement,
    Role,
    VersionSpec,
    VMSpec,
    disk_files,
    machine_spec,
    nvram_file,
)

KIND = "clone"
OFF_STATES = (DomainState.SHUTOFF, DomainState.ABSENT)
START_ATTEMPTS = 4
CLONE_NVRAM = "efivars.fd"  # a clone's own copy of its template's captured NVRAM
CLONE_SEED = "seed.iso"  # a clone's own NoCloud seed (VMs built with cloudInit)
WARM_STATE = "state.sav"  # a warm image's saved memory and device state, per VM


class CloneError(Exception):
    """A clone could not be made, started, stopped or removed; str() is the reason."""


# --- what a clone is made from ---------------------------------------------------------
@dataclass(frozen=True)
class CloneRequest:
    """Everything needed to make, start or remove one clone; the same request always gives
    the same names, MACs and addresses (reprovision keeps a clone's identity)."""

    key: str  # "c12": part of every domain and network name
    spec: VersionSpec  # the version's record: its VMs and topology, as the build captured
    workdir: Path  # the clone's own folder: disks, NVRAM, serial logs
    full_copy: bool = False
    ports: Mapping[str, int] = field(default_factory=dict)  # management ports to keep, by VM
    title: str = ""  # e.g. "lab@3 for carol"
    tags: Mapping[str, str] = field(default_factory=dict)  # extra metadata (class id, ...)
    # A warm start (engine.warm): the image's frozen disks back the clone's overlays and its
    # saved states are restored; None: a cold boot from the template disks.
    warm: WarmSource | None = None
    kind: str = KIND  # the owner tag: "clone", or "warm" for the instance a warm image is made of

    @property
    def owner(self) -> dict[str, str]:
        return {"kind": self.kind, self.kind: self.key}

    @property
    def vms(self) -> tuple[VMSpec, ...]:
        return self.spec.vms


@dataclass(frozen=True)
class WarmSource:
    """A warm image as its clones read it: per VM, the frozen overlays of its disks, its
    NVRAM and the saved state, in ``folder/<vm>/`` (the image was made as a clone there)."""

    folder: Path

    def disks(self, vm: VMSpec) -> list[Path]:
        return [self.folder / vm.name / f"disk{i}-{d.name}.qcow2" for i, d in enumerate(vm.disks)]

    def state(self, vm: VMSpec) -> Path:
        return self.folder / vm.name / WARM_STATE

    def nvram(self, vm: VMSpec) -> Path | None:
        return self.folder / vm.name / CLONE_NVRAM if vm.firmware.uefi else None


@dataclass(frozen=True)
class ClonedVM:
    name: str
    domain: str
    disks: tuple[Path, ...]
    mgmt_port: int
    nics: tuple[NicPlan, ...]
    invisible: bool
    # How it started: "cold" (booted) or "warm" (restored); `note` says what the dashboard
    # should (a fallback to cold and why, a guest without agent); `started_at` when its
    # guest began to run (time.time()), for its time to ready.
    start: str = "cold"
    note: str = ""
    started_at: float | None = None


@dataclass(frozen=True)
class CloneResult:
    vms: tuple[ClonedVM, ...]
    networks: tuple[str, ...]
    warnings: tuple[str, ...] = ()


# --- names and plans -------------------------------------------------------------------
def domain_name(config: EngineConfig, key: str, vm: str) -> str:
    return f"{config.name_prefix}{key}-{vm}"


def vm_dir(req: CloneRequest, vm: str) -> Path:
    return req.workdir / vm


def plan_networks(req: CloneRequest, config: EngineConfig) -> Topology:
    """The clone's networks and NICs: the version's MACs and addresses, as captured."""
    nics = {
        vm.name: tuple(
            NicPlan(
                vm=vm.name, name=n.name, subnet=n.subnet,
                network=network_name(config.name_prefix, req.key, n.subnet),
                slot=n.slot, mac=n.mac, ip=n.ip, static=n.static, model=n.model,
            )
            for n in vm.nics
        )
        for vm in req.vms
    }  # fmt: skip
    return networks_for(
        req.spec.topology,
        nics,
        owner=req.key,
        prefix=config.name_prefix,
        allow_internet=config.allow_internet,
        metadata={**req.tags, **req.owner},
    )


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def nvram_path(req: CloneRequest, vm: VMSpec) -> Path | None:
    """The clone's own copy of the VM's captured NVRAM (None for BIOS VMs)."""
    return vm_dir(req, vm.name) / CLONE_NVRAM if vm.firmware.uefi else None


def seed_path(req: CloneRequest, vm: VMSpec) -> Path | None:
    """The clone's own seed ISO (None for VMs built without cloudInit)."""
    return vm_dir(req, vm.name) / CLONE_SEED if vm.cloud_init is not None else None


def make_seed(req: CloneRequest, config: EngineConfig, vm: VMSpec) -> Path | None:
    """Write the clone's own seed for `vm` (see the module docstring); None without one."""
    path = seed_path(req, vm)
    if path is not None:
        clone_seed.write(path, vm, req.spec.topology, domain=domain_name(config, req.key, vm.name))
    return path


def domain_spec(
    req: CloneRequest, config: EngineConfig, vm: VMSpec, nics: Sequence[NicPlan], port: int
) -> DomainSpec:
    """The clone's domain: the version's VM record in the clone role."""
    folder = vm_dir(req, vm.name)
    seed = seed_path(req, vm)
    where = Placement(
        name=domain_name(config, req.key, vm.name),
        domain_type=config.domain_type,
        storage_root=config.storage_root,
        disks=tuple(disk_paths(req, vm)),
        networks={n.name: n.network for n in nics},
        nvram=nvram_path(req, vm),
        mgmt_port=port,
        seed=seed_drive(seed) if seed is not None else None,
        serial_log=folder / "serial.log",
        metadata={**req.tags, **req.owner, "vm": vm.name},
        title=f"{req.title} VM {vm.name}".strip()[:200] if req.title else None,
    )
    return machine_spec(vm, Role.CLONE, where)


def disk_paths(req: CloneRequest, vm: VMSpec) -> list[Path]:
    folder = vm_dir(req, vm.name)
    return [folder / f"disk{i}-{d.name}.qcow2" for i, d in enumerate(vm.disks)]


# --- disks -----------------------------------------------------------------------------
def make_disks(req: CloneRequest, config: EngineConfig) -> dict[str, list[Path]]:
    """Overlays on (or full copies of) every template disk, a copy of every captured NVRAM
    and a seed of its own for every VM built with cloudInit. Existing files are an error: a
    clone's disks are only ever made fresh (and with them a new cloud-init instance)."""
    made: dict[str, list[Path]] = {}
    for vm in req.vms:
        made[vm.name] = make_vm_disks(req, config, vm, warm=req.warm)
    return made


def make_vm_disks(
    req: CloneRequest, config: EngineConfig, vm: VMSpec, *, warm: WarmSource | None
) -> list[Path]:
    """make_disks for one VM: on the template's disks, or on a warm image's frozen ones."""
    folder = vm_dir(req, vm.name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = disk_paths(req, vm)
    bases = warm.disks(vm) if warm is not None else disk_files(vm, config.storage_root)
    for disk, base, path in zip(vm.disks, bases, paths, strict=True):
        if not base.is_file():
            what = "warm image" if warm else "template"
            raise CloneError(f"VM {vm.name}: {what} disk {base} is missing")
        if req.full_copy and warm is None:
            qimg.copy_full(base, path)
        else:
            # A warm image's frozen overlay is qcow2, whatever the template's format.
            qimg.create_overlay(base, path, backing_format="qcow2" if warm else disk.format)
    captured = warm.nvram(vm) if warm is not None else nvram_file(vm, config.storage_root)
    if captured is not None:
        try:
            efi.copy_nvram(captured, folder, name=CLONE_NVRAM)
        except FileNotFoundError as exc:
            raise CloneError(f"VM {vm.name}: {exc}") from exc
    make_seed(req, config, vm)
    return paths


def disk_usage(path: Path) -> int:
    """Bytes actually allocated under `path` (a file or a folder), as `du` counts them."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# --- networks --------------------------------------------------------------------------
def ensure_networks(hv, config: EngineConfig, key: str, topology: Topology) -> list[str]:
    """Define every network of the clone that is missing and start them all; idempotent
    (a clone started after a host reboot finds its networks defined but inactive, and
    starting an active network repairs its gateway)."""
    defined = {n.name for n in hv.list_networks(f"{config.name_prefix}{key}-")}
    for spec in topology.networks:
        if spec.name not in defined:
            hv.define_network(spec)
        hv.start_network(spec.name)
    return [n.name for n in topology.networks]


# --- lifecycle -------------------------------------------------------------------------
def create_clone(req: CloneRequest, *, hv, config: EngineConfig, start: bool = True) -> CloneResult:
    """Disks, networks and domains of a fresh clone, started unless `start` is False.

    Management ports in `req.ports` are reused when still free. On any failure everything
    of the clone is removed (disks included) and CloneError raised."""
    try:
        topology = plan_networks(req, config)
        make_disks(req, config)
        networks = ensure_networks(hv, config, req.key, topology)
        if start:
            ports = start_clone(
                req, hv=hv, config=config, ports=req.ports, topology=topology, networks_ready=True
            )
        else:
            ports = {}
            for vm in req.vms:
                port = _pick_port(req.ports.get(vm.name))
                hv.define(domain_spec(req, config, vm, topology.nics[vm.name], port))
                ports[vm.name] = port
    except Exception as exc:
        try:
            delete_clone(req, hv=hv, config=config)
        except Exception as cleanup_exc:  # report both: the cause first
            raise CloneError(f"{_reason(exc)} (and cleaning up failed: {cleanup_exc})") from exc
        if isinstance(exc, CloneError):
            raise
        raise CloneError(_reason(exc)) from exc
    return CloneResult(
        vms=tuple(
            ClonedVM(
                name=vm.name,
                domain=domain_name(config, req.key, vm.name),
                disks=tuple(disk_paths(req, vm)),
                mgmt_port=ports[vm.name],
                nics=topology.nics[vm.name],
                invisible=vm.invisible,
            )
            for vm in req.vms
        ),
        networks=tuple(networks),
        warnings=topology.warnings,
    )


def _reason(exc: BaseException) -> str:
    return str(exc) or exc.__class__.__name__


def start_clone(
    req: CloneRequest,
    *,
    hv,
    config: EngineConfig,
    ports: Mapping[str, int],
    vms: Iterable[str] | None = None,
    topology: Topology | None = None,
    networks_ready: bool = False,
    just_defined: bool = False,
    paused: bool = False,
) -> dict[str, int]:
    """Start the clone's VMs (all, or those named in `vms`); returns the management port of
    each VM started. Networks are brought up first, unless the caller just did. Each domain
    is redefined first (with its port in `ports` when still free), unless the caller has
    just defined it with that port; a port taken meanwhile is replaced by a free one.
    `paused` starts them with stopped vCPUs (see can_start_paused; resume them later)."""
    topology = topology or plan_networks(req, config)
    if not networks_ready:
        ensure_networks(hv, config, req.key, topology)
    wanted = set(vms) if vms is not None else None
    started: dict[str, int] = {}
    for vm in req.vms:
        if wanted is not None and vm.name not in wanted:
            continue
        name = domain_name(config, req.key, vm.name)
        state = hv.state(name)
        if state is DomainState.PAUSED and not paused and can_start_paused(hv):
            hv.resume(name)  # left paused by a batch that never got to resume it
        if state in (DomainState.RUNNING, DomainState.PAUSED):
            started[vm.name] = ports.get(vm.name) or 0
            continue
        started[vm.name] = _start_vm(
            hv,
            name,
            lambda port, vm=vm: domain_spec(req, config, vm, topology.nics[vm.name], port),
            ports.get(vm.name),
            defined=just_defined,
            paused=paused,
        )
    return started


def _pick_port(wanted: int | None) -> int:
    """`wanted` when it is still free (a clone keeps its port), else any free one."""
    return wanted if wanted and port_is_free(wanted) else free_loopback_port()


def can_start_paused(hv) -> bool:
    """Whether the driver offers the optional start_paused / resume pair."""
    return callable(getattr(hv, "start_paused", None)) and callable(getattr(hv, "resume", None))


def _start_vm(
    hv,
    name: str,
    spec_for: Callable[[int], DomainSpec],
    port: int | None,
    *,
    defined: bool,
    paused: bool = False,
) -> int:
    """(Re)define `name` with a management port and start it; on a port clash (someone took
    it between our check and QEMU's bind), retry with another port. Defining every time
    also heals a definition changed outside the portal; `defined` skips that when the
    domain was just defined with `port`."""
    last: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        if not (defined and attempt == 0 and port):
            port = _pick_port(port if attempt == 0 else None)
            hv.define(spec_for(port))
        try:
            (hv.start_paused if paused else hv.start)(name)
            return port
        except HypervisorError as exc:
            last = exc
            if "hostfwd" not in str(exc) and "host forwarding" not in str(exc):
                raise CloneError(f"{name} did not start: {exc}") from exc
    raise CloneError(f"{name} did not start: {last}")


def stop_clone(
    hv, domains: Sequence[str], *, timeout: float, force: bool = False
) -> dict[str, str]:
    """Power the domains off: hv.shutdown for all at once (the guest agent where one
    answers, else the ACPI button), then a forced stop for those still running after
    `timeout` (at once with `force`). Returns how each one went down."""
    how: dict[str, str] = {}
    running = [d for d in domains if hv.state(d) not in OFF_STATES]
    if force:
        for name in running:
            hv.destroy(name)
            how[name] = "forced off"
        return how
    asked = {name: hv.shutdown(name) for name in running}
    deadline = time.monotonic() + timeout
    for name in running:
        try:
            hv.wait_for_state(name, OFF_STATES, max(deadline - time.monotonic(), 0.01))
            how[name] = "powered off"
        except DomainNotFound:
            how[name] = "gone"
        except WaitTimedOut:
            hv.destroy(name)
            ignored = "its guest agent" if asked[name] is ShutdownVia.AGENT else "the power button"
            how[name] = f"forced off after the guest ignored {ignored}"
    return how


def delete_clone(req: CloneRequest, *, hv, config: EngineConfig) -> list[str]:
    """Remove the clone's domains and networks (found by metadata) and its folder.
    The template disks are never touched. Returns what went."""
    return remove_clone(req.key, req.workdir, hv=hv, config=config, owner=req.owner)


def remove_clone(
    key: str, workdir: Path, *, hv, config: EngineConfig, owner: Mapping[str, str] | None = None
) -> list[str]:
    """delete_clone for clone `key` whose folder is `workdir`: it needs no version record,
    so a clone whose version can no longer be read can still be removed."""
    # Listing only this clone's names keeps removing many clones at once linear.
    removed = cleanup.remove_owned(hv, f"{config.name_prefix}{key}-", owner or owner_of(key))
    if workdir.exists():
        shutil.rmtree(workdir)
        removed.append(f"folder {workdir}")
    return removed


def owner_of(key: str) -> dict[str, str]:
    """The metadata that marks the domains and networks of clone `key` as its own."""
    return {"kind": KIND, "clone": key}


def create_many(
    requests: Sequence[CloneRequest],
    *,
    hv,
    config: EngineConfig,
    workers: int = 8,
    timings: dict[str, float] | None = None,
) -> list[CloneResult | CloneError]:
    """Make and start many clones, `workers` at a time, in waves: every clone's disks,
    networks and domains first, then every start. Guests burn CPU from the moment they run
    (under TCG a whole core each while they boot), so when the driver can, domains start
    paused and are all resumed at the end: the starts do not compete with booting guests.
    A warm request's VMs are restored (paused) instead of booted, and after the resume their
    guests get the clock and a new identity (engine.identity); a VM whose restore fails
    boots cold from fresh disks on the template instead, its note saying why.
    Results in request order; a clone that failed is removed and its CloneError returned
    in its place. `timings` (when given) receives the seconds of each wave: "prepare",
    "start", "resume" and "renew"."""
    if not requests:
        return []
    size = max(1, min(workers, len(requests)))
    paused = can_start_paused(hv)

    def prepare(req: CloneRequest) -> CloneResult | CloneError:
        try:
            return create_clone(req, hv=hv, config=config, start=False)
        except CloneError as exc:
            return exc

    def start(pair: tuple[CloneRequest, CloneResult | CloneError]) -> CloneResult | CloneError:
        req, made = pair
        if isinstance(made, CloneError):
            return made
        try:
            if req.warm is not None:
                return _restore_clone(req, made, hv=hv, config=config, paused=paused)
            ports = start_clone(
                req, hv=hv, config=config, ports={v.name: v.mgmt_port for v in made.vms},
                networks_ready=True, just_defined=True, paused=paused,
            )  # fmt: skip
        except Exception as exc:
            return _discard(req, hv, config, exc)
        return replace(made, vms=tuple(replace(v, mgmt_port=ports[v.name]) for v in made.vms))

    def resume(pair: tuple[CloneRequest, CloneResult | CloneError]) -> CloneResult | CloneError:
        req, made = pair
        if isinstance(made, CloneError):
            return made
        try:
            for vm in made.vms:
                if paused:
                    hv.resume(vm.domain)
        except Exception as exc:
            return _discard(req, hv, config, exc)
        now = time.time()
        return replace(made, vms=tuple(replace(v, started_at=now) for v in made.vms))

    def renew(pair: tuple[CloneRequest, CloneResult | CloneError]) -> CloneResult | CloneError:
        req, made = pair
        if isinstance(made, CloneError) or req.warm is None:
            return made
        specs = {vm.name: vm for vm in req.vms}
        return replace(
            made,
            vms=tuple(
                replace(v, note=identity.renew(hv, v.domain, specs[v.name]))
                if v.start == "warm" else v
                for v in made.vms
            ),
        )  # fmt: skip

    timings = timings if timings is not None else {}
    with ThreadPoolExecutor(max_workers=size) as pool:
        began = time.monotonic()
        made = list(pool.map(prepare, requests))
        timings["prepare"] = time.monotonic() - began
        for wave, step in (("start", start), ("resume", resume), ("renew", renew)):
            began = time.monotonic()
            made = list(pool.map(step, zip(requests, made, strict=True)))
            timings[wave] = time.monotonic() - began
    return made


def _restore_clone(
    req: CloneRequest, made: CloneResult, *, hv, config: EngineConfig, paused: bool
) -> CloneResult:
    """Restore every VM of a prepared warm clone from its image's saved state (see
    create_many); a VM whose restore fails is booted cold instead, its note saying why."""
    assert req.warm is not None
    topology = plan_networks(req, config)
    vms = []
    for vm, cloned in zip(req.vms, made.vms, strict=True):
        spec = domain_spec(req, config, vm, topology.nics[vm.name], cloned.mgmt_port)
        try:
            hv.restore(req.warm.state(vm), spec, paused=paused)
            vms.append(replace(cloned, start="warm"))
            continue
        except HypervisorError as exc:
            reason = _reason(exc)
        cleanup.remove_domain(hv, cloned.domain)  # a half-restored QEMU goes too
        shutil.rmtree(vm_dir(req, vm.name), ignore_errors=True)
        make_vm_disks(req, config, vm, warm=None)  # a cold boot: fresh disks on the template
        port = _start_vm(
            hv,
            cloned.domain,
            lambda port, vm=vm: domain_spec(req, config, vm, topology.nics[vm.name], port),
            cloned.mgmt_port,
            defined=False,
            paused=paused,
        )
        note = f"booted cold: the warm restore failed ({reason})"[:300]
        vms.append(replace(cloned, mgmt_port=port, start="cold", note=note))
    return replace(made, vms=tuple(vms))


def _discard(req: CloneRequest, hv, config: EngineConfig, exc: Exception) -> CloneError:
    """Remove a clone that failed after it was made; its error, for the caller."""
    error = exc if isinstance(exc, CloneError) else CloneError(_reason(exc))
    try:
        delete_clone(req, hv=hv, config=config)
    except Exception as cleanup_exc:
        return CloneError(f"{error} (and cleaning up failed: {cleanup_exc})")
    return error
