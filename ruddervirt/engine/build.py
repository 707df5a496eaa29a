"""The build orchestrator: networks, one thread per VM, capture, cleanup.

`run_build` either returns the captured disks (in `plan.workdir / "capture"`) or raises
BuildError / BuildCancelled. Whatever happens, it leaves no domain, network, seed or key
behind; the VMs' working disks stay for inspection when the build failed (the caller
removes them later, and with the step cache releases the build's lease on its layers:
StepCache(config.step_cache_dir).release(plan.key)). It reaches the outside world only
through its BuildContext (one context per call: the context's stopper is the build's
cancel flag).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from ruddervirt.engine import cleanup, efi, isos
from ruddervirt.engine.capture import build_vm_spec, version_spec
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext, BuildScope, Clock, VMPlan, vm_domain_name
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.generalize import build_key_comment
from ruddervirt.engine.httpserver import BuildHTTPServer, Listener, listener_for
from ruddervirt.engine.phases import BuildPhase, VMPhase
from ruddervirt.engine.reporter import Reporter, Stopper
from ruddervirt.engine.stepcache import BuildCache, StepCache
from ruddervirt.engine.stepkey import VMKeys, file_hasher, vm_keys
from ruddervirt.engine.topology import Topology
from ruddervirt.engine.topology import plan as plan_topology
from ruddervirt.engine.vm import VMOutcome, VMRunner
from ruddervirt.engine.vm_cache import snapshots_supported
from ruddervirt.guest.ssh import generate_keypair, load_private_key
from ruddervirt.hypervisor.driver import DomainState, Hypervisor, HypervisorError
from ruddervirt.manifest.model import Manifest, Vm
from ruddervirt.spec import VersionSpec, VMSpec

POLL_INTERVAL_S = 0.5
NETWORK_TEARDOWN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class BuildPlan:
    key: str  # unique per build, e.g. "b42"; part of every domain and network name
    manifest: Manifest  # the base manifest; the build applies its buildOverrides
    workdir: Path
    parents: dict[str, list[Path]] = field(default_factory=dict)
    # The step cache (engine.vm_cache): used unless off here or in the config;
    # ``reuse_outside`` caches steps that depend on the outside too (as the manifest's
    # stepCache.reuseOutside); ``build_id`` is how the portal numbers this build.
    use_cache: bool = False
    reuse_outside: bool = False
    build_id: int | None = None
    # Whose checkpoints this build may reuse and adds to: part of every key. The portal
    # passes ``user-<id>`` of the instructor who asked for the build; "" (the engine's
    # default) never matches a portal scope.
    cache_scope: str = ""
    # On a failure, leave the VM that failed running (with its console and the build's
    # networks) instead of removing it; the caller removes it later (keep_failed_vm).
    keep_failed_vm: bool = False


@dataclass(frozen=True)
class BuildResult:
    """The captured disks and NVRAMs in `capture_dir`, and the version's record with its
    paths relative to `capture_dir` (rebase it once the folder has moved)."""

    capture_dir: Path
    spec: VersionSpec


class _Monitor(threading.Thread):
    """Polls the reporter for Cancel and enforces the build timeout."""

    def __init__(
        self, reporter: Reporter, stopper: Stopper, deadline: float, timeout: float, clock: Clock
    ) -> None:
        super().__init__(name="build-monitor", daemon=True)
        self.reporter, self.stopper, self.clock = reporter, stopper, clock
        self.deadline, self.timeout = deadline, timeout
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(POLL_INTERVAL_S):
            try:
                reason = self.reporter.poll()
            except Exception as exc:
                reason = None
                self.reporter.log(f"could not check for cancel: {exc}", stream="stderr")
            if reason:
                self.stopper.stop(reason)
            elif self.clock() >= self.deadline:
                self.stopper.stop(f"the build timeout ({self.timeout:.0f}s) was exceeded")


def run_build(plan: BuildPlan, ctx: BuildContext) -> BuildResult:
    """Build every VM of ``plan`` and capture their disks (see the module docstring)."""
    base = plan.manifest
    manifest = base.for_build()
    hv, config, reporter, stopper = ctx.hv, ctx.config, ctx.reporter, ctx.stopper
    _evict_isos(config, reporter)
    deadline = ctx.clock() + manifest.timeout
    monitor = _Monitor(reporter, stopper, deadline, manifest.timeout, ctx.clock)
    monitor.start()
    metadata = {"kind": "build", "build": plan.key}
    plan.workdir.mkdir(parents=True, exist_ok=True)
    http: BuildHTTPServer | None = None
    teardown: list[threading.Thread] = []
    cache = _build_cache(plan, ctx)
    failed_vms: list[str] = []  # the VMs whose own failure failed the build
    succeeded = False

    def networks_no_longer_needed() -> None:
        # Every VM is provisioned: from here on they only shut down, which they do over
        # their management NIC. The build's networks (and the HTTP server in them) go
        # meanwhile, instead of after the capture.
        if http is not None:
            http.stop()
        teardown.append(_tear_down_networks(hv, config.name_prefix, metadata, reporter))

    try:
        reporter.build_phase(BuildPhase.NETWORKING)
        topology = plan_topology(
            manifest,
            owner=plan.key,
            prefix=config.name_prefix,
            allow_internet=config.allow_internet,
            metadata=metadata,
        )
        for warning in topology.warnings:
            reporter.log(warning, stream="stderr")
        cleanup.create_networks(hv, topology.networks)
        reporter.log(
            f"{len(topology.networks)} network(s) up: "
            + ", ".join(n.name for n in topology.networks)
        )
        if stopper.stopped:
            raise BuildCancelled(stopper.reason)
        files = FileStore(
            manifest.files, config.files_cache_dir, policy=config.fetch_policy, log=reporter.log
        )
        http = _start_http(manifest, topology, files, reporter)
        reporter.build_phase(BuildPhase.BUILDING)
        scope = BuildScope(
            key=plan.key,
            workdir=plan.workdir,
            manifest=manifest,
            files=files,
            deadline=deadline,
            metadata=metadata,
            http=http,
            on_provisioned=_Countdown(len(manifest.vms), networks_no_longer_needed),
            cache=cache,
        )
        outcomes = _run_vms(ctx, scope, plan, topology, failed_vms)
        if http is not None:
            http.stop()
            reporter.log(f"HTTP server stopped after {len(http.requests)} request(s)")
            http = None
        reporter.build_phase(BuildPhase.CAPTURING)
        result = _capture(ctx, plan, manifest, topology, outcomes)
        if cache is not None:
            cache.release()  # a failed build keeps its lease with its disks (vm_cache)
        succeeded = True
        return result
    finally:
        if http is not None:
            http.stop()
        monitor.done.set()
        monitor.join(timeout=5)
        for thread in teardown:
            thread.join(timeout=NETWORK_TEARDOWN_TIMEOUT_S)
        kept = set() if succeeded else _keep_failed(ctx, plan, failed_vms)
        removed = cleanup.remove_owned(hv, config.name_prefix, metadata, keep_domains=kept)
        if removed:
            reporter.log("removed " + ", ".join(removed))
        if cache is not None:
            _close_cache(cache, config, reporter)


def _keep_failed(ctx: BuildContext, plan: BuildPlan, failed_vms: list[str]) -> set[str]:
    """The domains of the VMs that failed the build that stay running for inspection
    (``plan.keep_failed_vm``), with the build's networks: a VM that is no longer running
    (it crashed, it shut down) is removed as usual."""
    if not plan.keep_failed_vm:
        return set()
    kept = set()
    for vm in failed_vms:
        domain = vm_domain_name(ctx.config.name_prefix, plan.key, vm)
        try:
            running = ctx.hv.state(domain) == DomainState.RUNNING
        except HypervisorError:
            running = False
        if not running:
            ctx.reporter.log(f"VM {vm} is not running any more: not keeping it", vm=vm)
            continue
        kept.add(domain)
        ctx.reporter.log(
            f"keeping the failed VM {vm} running for inspection (domain {domain}, with its "
            "console and the build's networks)",
            vm=vm,
        )
    return kept


def _build_cache(plan: BuildPlan, ctx: BuildContext) -> BuildCache | None:
    """The build's step cache, or None when it is off (the plan, the config, or a
    hypervisor that cannot take live disk snapshots)."""
    if not (plan.use_cache and ctx.config.step_cache and snapshots_supported(ctx.hv)):
        return None
    return BuildCache(StepCache(ctx.config.step_cache_dir), build_id=plan.build_id)


def _close_cache(cache: BuildCache, config: EngineConfig, reporter: Reporter) -> None:
    """Evict what the cap and the age limit say; the checkpoints and layers a running
    build holds stay, and so do those of this build when it failed (its lease goes with
    its kept disks: StepCache.release)."""
    try:
        evicted = cache.store.evict(
            max_bytes=config.step_cache_max_bytes, max_age_s=config.step_cache_max_age_s
        )
    except OSError as exc:
        reporter.log(f"could not clean the step cache: {exc}", stream="stderr")
        return
    if evicted:
        reporter.log(f"step cache: evicted {len(evicted)} checkpoint(s) (size cap or age limit)")


class _Countdown:
    """Calls `then` (once) when it has been called `count` times, from any threads."""

    def __init__(self, count: int, then: Callable[[], None]) -> None:
        self.left = count
        self.then = then
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left != 0:
                return
        self.then()


def _tear_down_networks(
    hv: Hypervisor, prefix: str, owner: dict[str, str], reporter: Reporter
) -> threading.Thread:
    """Remove the build's networks in a thread of their own (the final cleanup removes
    whatever this leaves, and reports it)."""

    def work() -> None:
        try:
            removed = cleanup.remove_owned_networks(hv, prefix, owner)
        except HypervisorError as exc:
            reporter.log(f"could not remove the build's networks yet: {exc}", stream="stderr")
            return
        if removed:
            reporter.log("removed " + ", ".join(removed))

    thread = threading.Thread(target=work, name="network-teardown", daemon=True)
    thread.start()
    return thread


def _evict_isos(config: EngineConfig, reporter: Reporter) -> None:
    """Drop cached ISOs whose `isoCacheTTL` has passed since their last use."""
    try:
        removed = isos.evict_expired(config.iso_cache_dir)
    except OSError as exc:
        reporter.log(f"could not clean the ISO cache: {exc}", stream="stderr")
        return
    for path in removed:
        reporter.log(f"removed cached ISO {path.name} (unused for longer than its isoCacheTTL)")


def http_listeners(manifest: Manifest, topology: Topology) -> list[Listener]:
    """The gateway of every managed subnet that has a NIC of the build: where the build's
    guests find the HTTP server (and only they can: the networks are isolated)."""
    specs = {n.name: n for n in topology.networks}
    network_of = {p.subnet: p.network for plans in topology.nics.values() for p in plans}
    return [
        listener_for(subnet.name, specs[network_of[subnet.name]])
        for subnet in manifest.network.subnets
        if subnet.gateway is not None and subnet.name in network_of
    ]


def _start_http(
    manifest: Manifest, topology: Topology, files: FileStore, reporter: Reporter
) -> BuildHTTPServer | None:
    """Start the `httpDirectory` server, or return None when the manifest has none."""
    if not manifest.http_files:
        return None
    listeners = http_listeners(manifest, topology)
    if not listeners:
        raise BuildError(
            "httpDirectory needs a VM with a NIC on a managed subnet: the build's HTTP server "
            "listens only on those subnets' gateway addresses"
        )
    content = {name: files.content(name) for name in manifest.http_files}
    clients = {p.ip: p.vm for plans in topology.nics.values() for p in plans if p.ip}
    server = BuildHTTPServer(
        content, listeners, log=lambda text, vm: reporter.log(text, vm=vm), clients=clients
    )
    try:
        server.start()
    except OSError as exc:
        raise BuildError(f"the build's HTTP server could not start: {exc}") from exc
    reporter.log(
        f"HTTP server for the build's guests on {server.describe()} serving "
        + ", ".join(f"/{name}" for name in manifest.http_files)
    )
    return server


def _keys(
    manifest: Manifest, files: FileStore, manifest_key: str
) -> dict[str, tuple[str, list[str]]]:
    """Per VM: the private key the build logs in with, and the public keys the seed carries.

    Without sshPrivateKeyFile every build makes a fresh ed25519 pair that lives in memory
    only: it is never written to disk, so nothing of it can end up in a template."""
    private, public = generate_keypair(comment=build_key_comment(manifest_key))
    keys = {}
    for vm in manifest.vms:
        ref = vm.communicator.ssh_private_key_file
        if ref:
            text = files.text(ref)
            key = load_private_key(text)
            keys[vm.name] = (text, [f"{key.get_name()} {key.get_base64()} {vm.name}", public])
        else:
            keys[vm.name] = (private, [public])
    return keys


def _run_vms(
    ctx: BuildContext,
    scope: BuildScope,
    plan: BuildPlan,
    topology: Topology,
    failed_vms: list[str],
) -> list[VMOutcome]:
    """Run every VM in its own thread; the first failure stops the others and is raised.
    The VMs that failed by themselves (not stopped by another's failure or a cancel) are
    added to ``failed_vms``."""
    keys = _keys(scope.manifest, scope.files, plan.key)
    reporter, stopper = ctx.reporter, ctx.stopper
    runners = [
        VMRunner(
            ctx,
            scope,
            VMPlan(
                vm=vm,
                nics=topology.nics[vm.name],
                private_key=keys[vm.name][0],
                public_keys=tuple(keys[vm.name][1]),
                parent_disks=_parents(plan, vm),
                keys=_vm_keys(ctx, scope, plan, vm),
            ),
        )
        for vm in scope.manifest.vms
    ]
    failures: list[tuple[str, BaseException]] = []

    def one(runner: VMRunner) -> VMOutcome:
        try:
            return runner.run()
        except BaseException as exc:
            if not isinstance(exc, BuildCancelled) or not failures:
                failures.append((runner.vm.name, exc))
            if not isinstance(exc, BuildCancelled):
                failed_vms.append(runner.vm.name)
            reporter.vm_phase(runner.vm.name, VMPhase.FAILED, str(exc))
            # The first failure fails the build: stop the other VMs now.
            stopper.stop(stopper.reason or f"VM {runner.vm.name} failed")
            raise

    with ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix="vm") as pool:
        futures = [pool.submit(one, r) for r in runners]
        for future in futures:
            future.exception()
    if failures:
        real = [exc for _name, exc in failures if not isinstance(exc, BuildCancelled)]
        if real:
            raise real[0]
        raise BuildCancelled(stopper.reason)
    return [f.result() for f in futures]


def _vm_keys(ctx: BuildContext, scope: BuildScope, plan: BuildPlan, vm: Vm) -> VMKeys | None:
    """The step-cache keys of ``vm`` (None when the build has no cache)."""
    if scope.cache is None:
        return None
    manifest = scope.manifest
    return vm_keys(
        vm,
        manifest,
        file_hasher(manifest, lambda name: scope.files.content(name)),
        parents=_parents(plan, vm),
        allow_internet=ctx.config.allow_internet,
        reuse_outside=plan.reuse_outside,
        scope=plan.cache_scope,
        peer_parents=plan.parents,
    )


def _parents(plan: BuildPlan, vm: Vm) -> tuple[Path, ...] | None:
    parents = plan.parents.get(vm.name)
    return None if parents is None else tuple(parents)


def _capture(
    ctx: BuildContext,
    plan: BuildPlan,
    manifest: Manifest,
    topology: Topology,
    outcomes: list[VMOutcome],
) -> BuildResult:
    """Flatten and compact every disk into the capture folder, keep every NVRAM, and write
    the version's record."""
    base, config, reporter, stopper = plan.manifest, ctx.config, ctx.reporter, ctx.stopper
    capture_dir = plan.workdir / "capture"
    shutil.rmtree(capture_dir, ignore_errors=True)
    captured = []
    for outcome, vm in zip(outcomes, manifest.vms, strict=True):
        if stopper.stopped:
            raise BuildCancelled(stopper.reason)
        target = capture_dir / vm.name
        target.mkdir(parents=True)
        record = build_vm_spec(
            vm, topology.nics[vm.name], domain=outcome.domain, efi_spec=outcome.efi
        )
        disks = []
        for disk, prepared in zip(record.disks, outcome.disks, strict=True):
            dest = target / f"{prepared.name}.qcow2"
            started = time.monotonic()
            ctx.images.convert(prepared.path, dest, compress=config.compress_templates)
            size = ctx.images.virtual_size(dest, fmt="qcow2")
            disks.append(replace(disk, size=size, path=_relative(dest, capture_dir)))
            reporter.log(
                f"captured disk {prepared.name}: {dest.stat().st_size} bytes on disk "
                f"in {time.monotonic() - started:.1f}s",
                vm=vm.name,
            )
        firmware = record.firmware
        if outcome.efi is not None:
            nvram = efi.capture_nvram(outcome.efi, target, capture_dir)
            firmware = replace(firmware, nvram=nvram)
            reporter.log("captured the UEFI variables (NVRAM) with the disks", vm=vm.name)
        reporter.vm_phase(vm.name, VMPhase.DISK_CAPTURED)
        captured.append(
            with_identity(replace(record, disks=tuple(disks), firmware=firmware), outcome)
        )
    spec = version_spec(base, manifest, captured, topology.nics)
    return BuildResult(capture_dir=capture_dir, spec=spec)


def with_identity(record: VMSpec, outcome: VMOutcome) -> VMSpec:
    """`record` with what its build did to the guest's identity: the generalization, or for
    a VM with a seed that was not generalized, the build's instance id for every clone."""
    cloud_init = record.cloud_init
    if cloud_init is not None and outcome.generalization is None:
        cloud_init = replace(cloud_init, instance_id=outcome.domain)
    return replace(record, generalization=outcome.generalization, cloud_init=cloud_init)


def _relative(path: Path, base: Path) -> PurePosixPath:
    return PurePosixPath(path.relative_to(base).as_posix())
