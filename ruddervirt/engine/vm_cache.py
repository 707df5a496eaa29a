"""The step cache in a build VM: reuse the longest cached prefix of its steps, and keep a
checkpoint of its disks after every cacheable step that succeeded.

How a checkpoint is taken: the guest's ``sync`` over SSH (its page cache reaches the virtual
disks), then an external disk-only snapshot of the running domain (hv.snapshot_disks: libvirt
``snapshotCreateXML`` with DISK_ONLY | NO_METADATA | ATOMIC). QEMU flushes the current qcow2
files and switches the guest, without pausing it for more than a moment, to new overlays
backed by them; the old files are never written again, so they *are* the checkpoint, in O(1)
time and with only the step's own writes as their size. The alternatives cost more: a pause
+ ``qemu-img convert`` copies the whole disk after every step (and reading an image QEMU has
open is only safe once QEMU flushed it, which the snapshot does anyway); internal qcow2
snapshots keep every state inside one file that the next build would have to write to. A
checkpoint is crash-consistent (the state of a sudden power loss) with the guest's dirty data
written first by ``sync``. A build's checkpoints of one VM may take at most the sum of the
VM's disk sizes (``over_budget``); past that the VM takes no more.

How a checkpoint is reused: the VM's disks are fresh overlays on the checkpoint's top
layers (never written to the checkpoint itself), the VM boots as usual (a new instance for
cloud-init, the build's own key in its seed) and the remaining steps run; the reused steps
are reported as such (Reporter.step_reused) with the time they took when they ran. What a
checkpoint keeps is the disk: a step must not count on processes or tmpfs files an earlier
step left, since a reused VM has rebooted. The keys of the builds a checkpoint came from are
removed from the guest's authorized_keys once it is up.

A resume of a failed build (docs/builds.md#resuming-a-failed-build) is a build whose cache
holds the failed build's good steps: they are in the store like any other checkpoint, and the
failed build's lease names their keys, so no eviction removes them while its disks are kept.

`VMCache` is a mixin of engine.vm.VMRunner (as VMDisks is): it relies on the attributes
declared at the top of the class. With no cache (``self.cache`` None) every method is a no-op
and the VM builds exactly as without this module.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.engine.context import BuildContext, BuildScope, VMPlan
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.engine.reporter import Stopper
from ruddervirt.engine.stepcache import CheckpointRecord
from ruddervirt.engine.stepkey import VMKeys
from ruddervirt.guest.communicator import Communicator
from ruddervirt.guest.errors import Cancelled, GuestError
from ruddervirt.hypervisor.driver import HypervisorError
from ruddervirt.manifest.model import Vm

SYNC_TIMEOUT_S = 120.0
# Exits non-zero when a file's keys could not be removed (the build then fails).
_FORGET = "for f in /root/.ssh/authorized_keys /home/*/.ssh/authorized_keys; do " \
    "if [ -f \"$f\" ]; then sed -i {exprs} \"$f\" || exit 1; fi; done"  # fmt: skip


@dataclass
class VMCacheState:
    """One VM's use of the cache: its keys, the checkpoint it started from, its chains."""

    keys: VMKeys
    hit: CheckpointRecord | None = None
    reused: int = 0  # how many leading steps were reused
    chains: list[list[str]] = field(default_factory=list)
    requires: tuple[str, ...] = ()
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    broken: str = ""  # why checkpoints stopped (a failed snapshot): none are taken after


class VMCache:
    """Step-cache behaviour of a build VM (see the module docstring)."""

    ctx: BuildContext
    scope: BuildScope
    plan: VMPlan
    vm: Vm
    key: str
    domain: str
    dir: Path
    stopper: Stopper
    cache: VMCacheState | None

    def log(self, text: str, stream: str = "info") -> None:
        raise NotImplementedError  # VMRunner.log

    def guest(self) -> Communicator:
        raise NotImplementedError  # VMRunner.guest

    # --- planning ---------------------------------------------------------------------
    def plan_cache(self) -> VMCacheState | None:
        """Find the longest cached prefix of this VM's steps (None: no cache for this VM)."""
        shared, keys = self.scope.cache, self.plan.keys
        if shared is None or keys is None:
            return None
        if keys.base is None or self.vm.communicator.shell != "bash":
            why = keys.why_not or "only bash guests are checkpointed"
            self.log(f"step cache: not used for this VM ({why})")
            return None
        state = VMCacheState(keys=keys)
        state.requires = tuple(str(p) for p in (self.plan.parent_disks or ()))
        for count in range(keys.cacheable_prefix(), 0, -1):
            key = keys.steps[count - 1].key
            record = shared.claim(self.key, key, disks=len(self.vm.disks)) if key else None
            if record is not None:
                state.hit, state.reused = record, count
                state.chains = [list(c) for c in record.chains]
                state.requires = record.requires
                break
        hit = state.hit
        if hit is not None:
            self.log(
                f"step cache: starting from the checkpoint {hit.key[:12]} of step "
                f"{state.reused} ({hit.step_name}), made by {_origin(hit)}"
                + ("; not typing the bootCommand again" if self.vm.boot_command else "")
            )
        for step in keys.steps[state.reused :]:
            if step.key is None:
                self.log(f"step cache: steps from here on are not cached ({step.why_not})")
                break
        return state

    def cache_disk_path(self, index: int, name: str) -> Path | None:
        """Where disk ``index`` lives when this VM is cached: a new layer in the store (on a
        reused checkpoint, an overlay on its top layer: ``reuse_base``), else None."""
        state = self.cache
        if state is None:
            return None
        assert self.scope.cache is not None
        layer = f"{self.key}-{self.vm.name}-{state.token}-{name}-{state.reused}.qcow2"
        while len(state.chains) <= index:
            state.chains.append([])
        state.chains[index].append(layer)
        self.scope.cache.hold(self.key, layers=(layer,))
        self.scope.cache.store.make_layers_dir()
        path = self.scope.cache.store.layer_path(layer)
        self.link_working_disk(index, name, path)
        return path

    def link_working_disk(self, index: int, name: str, layer: Path) -> None:
        """``disk<index>-<name>.qcow2`` in the VM's folder: a link to the layer the guest
        writes, where a failed build's disks are looked for (kept for inspection: the
        engine keeps the lease of a build that failed, the caller releases it with
        StepCache.release when it removes the build's folder)."""
        link = self.dir / f"disk{index}-{name}.qcow2"
        link.unlink(missing_ok=True)
        link.symlink_to(layer)

    def reusing(self) -> bool:
        """Whether this VM starts from a checkpoint (its installer's bootCommand is done)."""
        return self.cache is not None and self.cache.hit is not None

    def reuse_base(self, index: int) -> Path | None:
        """The checkpoint layer disk ``index`` is an overlay on, when reusing; else None."""
        state = self.cache
        if state is None or state.hit is None:
            return None
        assert self.scope.cache is not None
        return self.scope.cache.store.top_layers(state.hit)[index]

    # --- running ----------------------------------------------------------------------
    def report_reused(self) -> int:
        """Report the reused steps; how many there are (provisioning starts after them)."""
        state = self.cache
        if state is None or state.hit is None:
            return 0
        shared = self.scope.cache
        assert shared is not None
        total = len(self.vm.provisioners)
        for index in range(state.reused):
            step = self.vm.provisioners[index]
            key = state.keys.steps[index].key or ""
            record = shared.store.get(key) or state.hit
            label = step.name or f"{step.type} {index + 1}"
            origin = _origin(record)
            self.log(
                f"step {index + 1}/{total}: {label} ({step.type}): reused from {origin} "
                f"(saved {record.duration_s:.1f}s)",
                "phase",
            )
            self.ctx.reporter.step_reused(
                self.vm.name,
                index,
                key=key,
                from_build=record.build_id,
                saved_s=record.duration_s,
            )
        self.forget_old_build_keys(state.hit)
        return state.reused

    def forget_old_build_keys(self, record: CheckpointRecord) -> None:
        """Remove from the guest the SSH keys of the builds the checkpoint came from. Raises
        BuildError when that fails: a template must never keep another build's key."""
        exprs = " ".join(f"-e '/ ruddervirt-build-{b}$/d'" for b in _builds_of(record, self.key))
        if not exprs:
            return
        try:
            status = self.guest().run(
                _FORGET.format(exprs=exprs), timeout=30, cancel=self.stopper.event
            )
        except Cancelled as exc:
            raise BuildCancelled(self.stopper.reason or "cancelled") from exc
        except GuestError as exc:
            raise BuildError(self._forget_failed(str(exc))) from exc
        if status != 0:
            raise BuildError(self._forget_failed(f"exit status {status}"))

    def _forget_failed(self, why: str) -> str:
        return (
            f"VM {self.vm.name}: could not remove earlier builds' SSH keys from the guest "
            f"started from a cached checkpoint ({why})"
        )

    def checkpoint(self, index: int, took: float) -> None:
        """After step ``index`` succeeded in ``took`` seconds: keep the disks as its
        checkpoint, if the step is cacheable. Never fails the build: a checkpoint that cannot
        be taken is logged and the VM goes on without further checkpoints."""
        state, shared = self.cache, self.scope.cache
        if state is None or shared is None or state.broken:
            return
        key = state.keys.steps[index].key
        if key is None:
            return
        over = self.over_budget()
        if over:
            state.broken = over
            self.log(f"step cache: no more checkpoints for this VM: {over}", "stderr")
            return
        started = time.monotonic()
        try:
            self.guest().run("sync", timeout=SYNC_TIMEOUT_S, cancel=self.stopper.event)
            chains = [list(c) for c in state.chains]
            self.switch_layers(index)
        except (GuestError, HypervisorError, OSError, ValueError) as exc:
            state.broken = str(exc)
            self.log(f"step cache: no checkpoint of this step ({exc})", "stderr")
            return
        record = self.record(key, index, chains, took)
        kept = shared.store.put(record)
        # Leased with the build: a failed build's checkpoints stay (a resume starts from
        # them) until its kept disks go and StepCache.release drops the lease.
        shared.hold(self.key, keys=(key,))
        what = "kept" if kept else "already kept by another build"
        self.log(
            f"step cache: checkpoint {key[:12]} {what} "
            f"({record.size} bytes, {time.monotonic() - started:.1f}s)"
        )

    def over_budget(self) -> str:
        """Why this VM may take no more checkpoints, or "". The budget: the layers this
        build made for the VM (its checkpoints and the layer the step just wrote) may take
        at most the sum of the VM's disk sizes."""
        state, shared = self.cache, self.scope.cache
        assert state is not None and shared is not None
        mine = f"{self.key}-{self.vm.name}-{state.token}-"
        used = shared.store.size_of([[n for c in state.chains for n in c if n.startswith(mine)]])
        budget = sum(disk.size for disk in self.vm.disks)
        if used <= budget:
            return ""
        return f"its checkpoints take {used} bytes, over the budget of {budget}"

    def switch_layers(self, step: int) -> None:
        """Snapshot every disk onto a new layer; the current ones become read-only."""
        state, shared = self.cache, self.scope.cache
        assert state is not None and shared is not None
        overlays: dict[Path, Path] = {}
        for disk, chain in zip(self.vm.disks, state.chains, strict=True):
            layer = f"{self.key}-{self.vm.name}-{state.token}-{disk.name}-{step + 1}.qcow2"
            shared.hold(self.key, layers=(layer,))
            overlays[shared.store.layer_path(chain[-1])] = shared.store.layer_path(layer)
        self.ctx.hv.snapshot_disks(self.domain, overlays)  # type: ignore[attr-defined]
        for i, (disk, chain, new) in enumerate(
            zip(self.vm.disks, state.chains, overlays.values(), strict=True)
        ):
            chain.append(new.name)
            self.link_working_disk(i, disk.name, new)
        self.switched_disks(list(overlays.values()))

    def switched_disks(self, paths: list[Path]) -> None:
        raise NotImplementedError  # VMRunner: the guest writes to (and capture reads) these

    def record(
        self, key: str, index: int, chains: list[list[str]], took: float
    ) -> CheckpointRecord:
        state, shared = self.cache, self.scope.cache
        assert state is not None and shared is not None
        step = self.vm.provisioners[index]
        now = time.time()
        return CheckpointRecord(
            key=key,
            build=self.key,
            vm=self.vm.name,
            step_index=index,
            step_name=step.name or f"{step.type} {index + 1}",
            chains=tuple(tuple(c) for c in chains),
            created=now,
            last_used=now,
            size=shared.store.size_of(chains),
            duration_s=round(took, 3),
            requires=state.requires,
            build_id=shared.build_id,
        )


def snapshots_supported(hv: object) -> bool:
    """Whether ``hv`` can take the live disk snapshots checkpoints are made with."""
    return callable(getattr(hv, "snapshot_disks", None))


def _origin(record: CheckpointRecord) -> str:
    return f"build #{record.build_id}" if record.build_id is not None else f"build {record.build}"


def _builds_of(record: CheckpointRecord, current: str) -> list[str]:
    """The build keys whose layers the checkpoint's chains hold, except ``current``."""
    found = {name.split("-", 1)[0] for chain in record.chains for name in chain}
    found.add(record.build)
    return sorted(b for b in found if b != current and b.isalnum())
