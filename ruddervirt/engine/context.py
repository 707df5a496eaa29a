"""What a build runs on (``BuildContext``), what its VMs share (``BuildScope``) and what one VM
is given (``VMPlan``): the engine's inputs as three small records instead of keyword lists.

The context is where the outside world comes in: the hypervisor, the guest communicator,
image files, the reporter, the cancel flag and the clock. Unit tests hand in fakes
(``FakeHypervisor``, ``ScriptedCommunicator``, ``FakeImages``); the portal the real ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.files import FileStore
from ruddervirt.engine.httpserver import BuildHTTPServer
from ruddervirt.engine.reporter import Reporter, Stopper
from ruddervirt.engine.stepcache import BuildCache
from ruddervirt.engine.stepkey import VMKeys
from ruddervirt.engine.topology import NicPlan
from ruddervirt.guest.communicator import CommunicatorFactory
from ruddervirt.guest.ssh import ssh_communicator
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.hypervisor.images import Images, QemuImages
from ruddervirt.manifest.model import Manifest, Vm

Clock = Callable[[], float]  # seconds, monotonic


def vm_domain_name(prefix: str, build_key: str, vm: str) -> str:
    """The domain of build VM ``vm`` of the build ``build_key`` (e.g. "b42")."""
    return f"{prefix}{build_key}-{vm}"


@dataclass(frozen=True)
class BuildContext:
    """The services of one build, shared by its orchestrator and every VM thread.

    ``stopper`` is the build's cancel flag (set by Cancel, the build timeout or the first
    VM failure); ``clock`` measures every deadline of the build.
    """

    config: EngineConfig
    hv: Hypervisor
    reporter: Reporter
    communicator: CommunicatorFactory = ssh_communicator
    images: Images = field(default_factory=QemuImages)
    stopper: Stopper = field(default_factory=Stopper)
    clock: Clock = time.monotonic


@dataclass(frozen=True)
class BuildScope:
    """What every VM of one build shares besides the context."""

    key: str  # unique per build, e.g. "b42"; part of every domain name
    workdir: Path
    manifest: Manifest  # as the build sees it (buildOverrides applied)
    files: FileStore
    deadline: float  # on the context's clock
    metadata: Mapping[str, str]  # owner tags of every domain and network
    http: BuildHTTPServer | None = None
    # Called once by each VM when its provisioners are done, before it shuts down.
    on_provisioned: Callable[[], None] | None = None
    cache: BuildCache | None = None  # the step cache (None: off for this build)


@dataclass(frozen=True)
class VMPlan:
    """One VM of the build: its manifest entry, NICs, login keys and parent disks."""

    vm: Vm
    nics: tuple[NicPlan, ...]
    private_key: str = field(repr=False, default="")
    public_keys: tuple[str, ...] = ()
    parent_disks: tuple[Path, ...] | None = None  # a buildRef source's template disks
    keys: VMKeys | None = None  # its step-cache keys (None: the cache is off)
