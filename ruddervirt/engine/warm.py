"""Warm images: one booted instance of a module version, saved, for clones to resume.

:func:`make_image` boots the version once through the clone pipeline (a clone of kind
"warm", its folder the image's: ``<storage>/warm/<id>/<vm>/``), waits until every VM is
ready (engine.readiness: its agent or its SSH banner), then saves each VM's memory and
device state with the hypervisor's save (``state.sav``, beside the VM's disks) and removes
the domains and networks. What is left is frozen (:func:`freeze`): the disks the instance
wrote to become read-only backing files of every warm clone's overlays, and the saved
states are read by every warm clone's restore (engine.clone.create_many). Nothing in memory
is shared: each restored clone has all of its RAM to itself.

Plain Python: the portal (clones.warm) records what this returns.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ruddervirt.engine import cleanup, readiness
from ruddervirt.engine.clone import (
    CLONE_SEED,
    CloneError,
    CloneRequest,
    WarmSource,
    create_clone,
    delete_clone,
    disk_usage,
)
from ruddervirt.engine.config import EngineConfig
from ruddervirt.guest.ssh import read_banner
from ruddervirt.hypervisor.driver import HypervisorError

KIND = "warm"  # the owner tag of the instance's domains and networks while it is made
FOLDER_MODE = 0o711  # QEMU (libvirt-qemu) passes through to the frozen disks; nobody lists
FROZEN_MODE = 0o444  # the frozen disks, NVRAM and saved states: read by every clone
READY_TIMEOUT_S = 900.0
POLL_S = 1.0
PROBE_S = 1.0
LEFT_OUT = ("serial.log", CLONE_SEED)  # the instance's own: no clone reads them
# A guest whose agent answered is saved once its SSH server also answers (cloud-init has
# made its host keys and sshd runs, so every clone resumes a guest at its login prompt),
# or after this long: a guest without SSH is saved all the same.
SSH_GRACE_S = 180.0


@dataclass(frozen=True)
class Made:
    """A warm image that was made: its bytes on disk, the seconds it took, and how long
    each VM took to become ready (VM name -> seconds)."""

    size_bytes: int
    seconds: float
    ready_s: dict[str, float]


def make_image(
    req: CloneRequest,
    *,
    hv,
    config: EngineConfig,
    ready_timeout: float = READY_TIMEOUT_S,
    probe: Callable = readiness.probe_all,
    sleep: Callable[[float], None] = time.sleep,
) -> Made:
    """Make the warm image of `req` (kind KIND; `req.workdir` is the image's folder, new).
    On any failure everything is removed (its folder too) and CloneError raised."""
    if req.kind != KIND or req.warm is not None:
        raise ValueError("a warm image is made from a cold request of kind 'warm'")
    began = time.monotonic()
    try:
        made = create_clone(req, hv=hv, config=config, start=True)
        ready, via = wait_ready(hv, made, ready_timeout, probe=probe, sleep=sleep)
        by_agent = [vm for vm in made.vms if via[vm.name] == readiness.AGENT]
        wait_ssh(by_agent, SSH_GRACE_S, sleep=sleep)
        source = WarmSource(req.workdir)
        for vm, cloned in zip(req.vms, made.vms, strict=True):
            hv.save(cloned.domain, source.state(vm))
        cleanup.remove_owned(hv, f"{config.name_prefix}{req.key}-", req.owner)
        freeze(req.workdir)
    except Exception as exc:
        reason = str(exc) or exc.__class__.__name__
        try:
            delete_clone(req, hv=hv, config=config)
        except Exception as cleanup_exc:
            reason += f" (and cleaning up failed: {cleanup_exc})"
        raise CloneError(f"the warm image was not made: {reason}") from exc
    return Made(disk_usage(req.workdir), time.monotonic() - began, ready)


def wait_ready(
    hv, made, timeout: float, *, probe: Callable = readiness.probe_all, sleep=time.sleep
) -> tuple[dict[str, float], dict[str, str]]:
    """Probe the instance's VMs until every one answered: the seconds each took, and how it
    answered (readiness.AGENT or SSH), by VM name. CloneError after `timeout`, or at once
    when a VM stopped by itself (hv.fault)."""
    began = time.monotonic()
    left = {vm.domain: vm for vm in made.vms}
    ready: dict[str, float] = {}
    via: dict[str, str] = {}
    while left:
        targets = [readiness.ProbeTarget(d, vm.mgmt_port) for d, vm in left.items()]
        for domain, answer in probe(hv, targets).items():
            name = left.pop(domain).name
            ready[name], via[name] = time.monotonic() - began, answer.via
        for domain, vm in left.items():
            fault = _fault(hv, domain)
            if fault is not None:
                raise CloneError(f"VM {vm.name} stopped while booting: {fault.describe()}")
        if left and time.monotonic() - began >= timeout:
            names = ", ".join(vm.name for vm in left.values())
            raise CloneError(f"VM(s) {names} not ready after {timeout:g} s")
        if left:
            sleep(POLL_S)
    return ready, via


def wait_ssh(vms, grace_s: float, *, sleep=time.sleep) -> None:
    """Wait up to `grace_s` seconds in all until the SSH server of every VM of `vms`
    (ClonedVMs) sends its banner."""
    deadline = time.monotonic() + grace_s
    for vm in vms:
        while vm.mgmt_port and time.monotonic() < deadline:
            if readiness.is_ssh_banner(read_banner(vm.mgmt_port, timeout=PROBE_S)):
                break
            sleep(POLL_S)


def _fault(hv, domain: str):
    try:
        return hv.fault(domain)
    except HypervisorError:
        return None


def freeze(folder: Path) -> None:
    """Make a saved instance's folder a warm image: the instance's own files (serial log,
    seed) removed, every other file read-only for everyone (QEMU reads the disks as backing
    files, libvirtd the states), folders traversable but not listable."""
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_dir():
            path.chmod(FOLDER_MODE)
        elif path.name in LEFT_OUT:
            path.unlink()
        else:
            path.chmod(FROZEN_MODE)
    folder.chmod(FOLDER_MODE)


def drop_image(folder: Path) -> bool:
    """Remove a warm image's folder (read-only files included); whether there was one."""
    if not folder.exists():
        return False
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o700)
    shutil.rmtree(folder)
    return True


def make_folder(folder: Path) -> None:
    """The image's new folder (and ``warm/`` above it), traversable by QEMU."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(folder.parent, FOLDER_MODE)
    folder.mkdir(mode=FOLDER_MODE)
