"""The step cache's keys: a hash chain over what each provisioner step's result depends on.

``key(base) = H(VERSION, the VM's source identity, the VM settings that reach the guest)``
and ``key(step n) = H(key(step n-1), the step's canonical description)``; a step's
description includes the content hash of every file it uses. So a checkpoint of step n is
reused only when the source, the VM's settings and every step up to n are unchanged.

What changes a key: the cache's scope (whose builds these are: the portal passes the
instructor who asked for the build, so each instructor's builds reuse only their own
checkpoints), the source's checksum (a `buildRef`: the parent template's disk files),
cpu, memory, disks (name, size, bus), firmware, NICs and their subnets' addresses, cloud-init
user and network data, the communicator's user, shell and port, an `sshPrivateKeyFile`'s
content, bootCommand, installer ISOs and floppy files, the content of every ``httpDirectory`` file,
whether each of the VM's networks has internet while building, ``reuseOutside`` itself, and
the full definition (source, settings and every step) of each other VM sharing a subnet
with it (a step can talk to them); a step's type and what it runs (inline
text, script and file content, env, executeCommand, destination, reboot command).

What does not: a step's ``name`` (renaming does not change what a step does), its
``stepTimeout`` and the build ``timeout`` (a longer limit does not change a result that
succeeded), ``retries``, ``generalize`` (it runs after the last step), the build's throwaway
SSH key, and anything YAML-only (comments, key order, formatting): keys are computed from
the parsed manifest, never from its text.

Steps whose result depends on the outside are not cacheable unless the manifest says
``stepCache: {reuseOutside: true}`` or the build asks for it: a VM with internet on while
building, a `url` file without a checksum, a `url` source without a checksum, a handbuild
step (a person did it) and windows-update. Every step after an uncacheable one is
uncacheable too (its key would have to include the unknown).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ruddervirt.manifest.model import (
    AnyStep,
    FileStep,
    HandbuildStep,
    Manifest,
    ShellStep,
    Vm,
    WindowsUpdateStep,
)

# Bump when the engine changes what a build does to a guest before or between steps.
VERSION = "ruddervirt-step-cache-1"

ContentHash = Callable[[str], str]  # a `files` name -> its content's sha256 hex


@dataclass(frozen=True)
class StepKey:
    """One step's key, or why it has none (``key`` is None: not cacheable)."""

    key: str | None
    why_not: str = ""


@dataclass(frozen=True)
class VMKeys:
    """A VM's base key and one StepKey per provisioner, in order."""

    base: str | None
    steps: tuple[StepKey, ...]
    why_not: str = ""  # why the base has no key

    def cacheable_prefix(self) -> int:
        """How many leading steps have keys."""
        count = 0
        for step in self.steps:
            if step.key is None:
                break
            count += 1
        return count


def digest(*parts: object) -> str:
    """sha256 of the canonical JSON of ``parts``."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_hasher(manifest: Manifest, content: Callable[[str], bytes | Path]) -> ContentHash:
    """A ContentHash over ``manifest.files``: an inline file's text, a `url` file's checksum
    (so nothing is downloaded to compute a key) or, without one, its fetched content."""

    def hashed(name: str) -> str:
        entry = manifest.file(name)
        if entry.inline is not None:
            return hashlib.sha256(entry.inline.encode()).hexdigest()
        if entry.checksum:
            return entry.checksum.removeprefix("sha256:")
        data = content(name)
        if isinstance(data, Path):
            with data.open("rb") as stream:
                return hashlib.file_digest(stream, "sha256").hexdigest()
        return hashlib.sha256(data).hexdigest()

    return hashed


def outside_reason(vm: Vm, manifest: Manifest, *, allow_internet: bool) -> str:
    """Why every step of ``vm`` depends on the outside (internet on while building), or ""."""
    if not allow_internet:
        return ""
    for nic in vm.nics:
        subnet = manifest.network.subnet(nic.subnet)
        if manifest.network.vpc(subnet.vpc).internet:
            return f"the VM has internet access while building (NIC {nic.name})"
    return ""


def base_key(
    vm: Vm,
    manifest: Manifest,
    files: ContentHash,
    *,
    parents: Sequence[Path] | None,
    reuse_outside: bool,
    scope: str = "",
    allow_internet: bool = True,
    peer_parents: Mapping[str, Sequence[Path]] | None = None,
) -> tuple[str | None, str]:
    """(key, why not) of the VM before its first step. ``scope`` is whose cache this is
    (the portal: ``user-<id>`` of the instructor who asked for the build; the engine's own
    default "" never equals a portal scope), so different owners never share a key."""
    if vm.efi_firmware is not None:
        # A checkpoint holds the disks, not the UEFI variable store: boot entries an
        # installer or a step wrote would be lost in a VM started from it.
        return None, "a UEFI VM's NVRAM is not checkpointed"
    source = vm.source
    if source.kind == "url" and not source.checksum and not reuse_outside:
        return None, "the source URL has no checksum"
    identity, settings = _definition(vm, manifest, files, parents)
    settings["internet"] = _internet(vm, manifest, allow_internet=allow_internet)
    settings["reuse_outside"] = reuse_outside
    settings["http_files"] = [[name, files(name)] for name in manifest.http_files]
    settings["peers"] = _peers(vm, manifest, files, peer_parents or {})
    return digest(VERSION, scope, identity, settings), ""


def _definition(
    vm: Vm, manifest: Manifest, files: ContentHash, parents: Sequence[Path] | None
) -> tuple[object, dict[str, object]]:
    """(source identity, settings that reach the guest) of ``vm`` alone."""
    source = vm.source
    identity: object
    if source.kind == "url":
        identity = source.checksum or source.url
    elif source.kind == "buildRef":
        identity = [_file_identity(p) for p in (parents or ())]
    else:
        identity = "blank"
    subnets = {nic.subnet: manifest.network.subnet(nic.subnet) for nic in vm.nics}
    settings: dict[str, object] = {
        "name": vm.name,
        "cpu": vm.resources.cpu,
        "memory": vm.resources.memory,
        "disks": [[d.name, d.size, d.bus] for d in vm.disks],
        "efi": None if vm.efi_firmware is None else vm.efi_firmware.secure_boot,
        "nics": [[n.name, n.subnet, n.slot, n.ip, n.mac, n.model] for n in vm.nics],
        "subnets": {k: [s.cidr, s.dhcp, list(s.dns), s.unmanaged] for k, s in subnets.items()},
        "cloud_init": None
        if vm.cloud_init is None
        else [vm.cloud_init.user_data, vm.cloud_init.network_data],
        "user": vm.communicator.ssh_username,
        "shell": vm.communicator.shell,
        "port": vm.communicator.ssh_port,
        "key_file": _hash_or_none(files, vm.communicator.ssh_private_key_file),
        "boot_command": list(vm.boot_command),
        "isos": [[i.url if not i.checksum else None, i.checksum] for i in vm.isos],
        "floppy": [[name, files(name)] for name in vm.floppy_files],
    }
    return identity, settings


def _internet(vm: Vm, manifest: Manifest, *, allow_internet: bool) -> list[object]:
    """Per NIC, whether its network has internet while building (the host's switch too)."""
    result: list[object] = []
    for nic in vm.nics:
        vpc = manifest.network.vpc(manifest.network.subnet(nic.subnet).vpc)
        result.append([nic.name, bool(allow_internet and vpc.internet)])
    return result


def _peers(
    vm: Vm, manifest: Manifest, files: ContentHash, parents: Mapping[str, Sequence[Path]]
) -> list[object]:
    """The full definition (source, settings, every step) of each other VM that shares a
    subnet with ``vm``: a step can talk to them, so what they are and run is an input.
    The rule is deliberately simple: any change to a peer changes this VM's whole chain."""
    mine = {nic.subnet for nic in vm.nics}
    peers: list[object] = []
    for other in sorted(manifest.vms, key=lambda v: v.name):
        if other.name == vm.name or not mine & {nic.subnet for nic in other.nics}:
            continue
        identity, settings = _definition(other, manifest, files, parents.get(other.name))
        steps = [step_description(step, files) for step in other.provisioners]
        peers.append([identity, settings, steps])
    return peers


def step_description(step: AnyStep, files: ContentHash) -> dict[str, object]:
    """What ``step``'s result depends on, as JSON-ready data (never its name or timeout)."""
    if isinstance(step, ShellStep):
        return {
            "type": step.type,
            "inline": step.inline,
            "script": _hash_or_none(files, step.script_file),
            "env": [[e.name, e.value] for e in step.env],
            "execute": step.execute_command,
        }
    if isinstance(step, FileStep):
        return {"type": step.type, "file": files(step.file_ref), "to": step.destination}
    fields = {k: v for k, v in vars(step).items() if k not in ("name", "step_timeout")}
    return {"type": step.type, **fields}


def step_outside_reason(step: AnyStep, manifest: Manifest) -> str:
    """Why ``step`` depends on the outside, or ""."""
    if isinstance(step, HandbuildStep):
        return "a handbuild step (a person did it)"
    if isinstance(step, WindowsUpdateStep):
        return "windows-update installs whatever the update server offers"
    refs = []
    if isinstance(step, FileStep):
        refs.append(step.file_ref)
    if isinstance(step, ShellStep) and step.script_file:
        refs.append(step.script_file)
    for ref in refs:
        entry = manifest.file(ref)
        if entry.url and not entry.checksum:
            return f"file {ref} comes from a URL without a checksum"
    return ""


def vm_keys(
    vm: Vm,
    manifest: Manifest,
    files: ContentHash,
    *,
    parents: Sequence[Path] | None = None,
    allow_internet: bool = True,
    reuse_outside: bool = False,
    scope: str = "",
    peer_parents: Mapping[str, Sequence[Path]] | None = None,
) -> VMKeys:
    """The key chain of ``vm`` (``manifest`` as the build sees it: buildOverrides applied).
    ``reuse_outside`` (or the manifest's stepCache.reuseOutside): cache steps that depend
    on the outside too. ``allow_internet``: whether this host gives VMs internet at all.
    ``scope``: whose cache (see base_key); ``peer_parents``: the parent disks of the other
    VMs (their `buildRef` sources are part of their definition)."""
    reuse_outside = reuse_outside or manifest.reuse_outside
    base, why = base_key(
        vm,
        manifest,
        files,
        parents=parents,
        reuse_outside=reuse_outside,
        scope=scope,
        allow_internet=allow_internet,
        peer_parents=peer_parents,
    )
    outside = "" if reuse_outside else outside_reason(vm, manifest, allow_internet=allow_internet)
    if base is not None and outside:
        base, why = None, outside
    keys: list[StepKey] = []
    previous = base
    for step in vm.provisioners:
        reason = "" if reuse_outside else step_outside_reason(step, manifest)
        if previous is None:
            keys.append(StepKey(None, why if not keys else "an earlier step is not cacheable"))
        elif reason:
            previous = None
            keys.append(StepKey(None, reason))
        else:
            previous = digest(previous, step_description(step, files))
            keys.append(StepKey(previous))
    return VMKeys(base=base, steps=tuple(keys), why_not=why)


def _hash_or_none(files: ContentHash, name: str | None) -> str | None:
    return None if name is None else files(name)


def _file_identity(path: Path) -> list[object]:
    """A parent template's disk: its path, size and modification time (a version's files
    never change; a module deleted and made again gets new files)."""
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, stat.st_mtime_ns]
