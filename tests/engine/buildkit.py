"""A build on fakes: FakeHypervisor, ScriptedCommunicator per VM, FakeImages, and a reporter
that records what the engine told it. No VM boots; a build takes well under a second.

A VM's source is a `buildRef` whose parent disk is a fake image, so nothing is downloaded.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ruddervirt.engine import generalize
from ruddervirt.engine.build import BuildPlan, BuildResult, run_build
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext
from ruddervirt.engine.phases import BuildPhase, VMPhase
from ruddervirt.engine.reporter import NullReporter
from ruddervirt.guest import fake
from ruddervirt.guest.communicator import Endpoint
from ruddervirt.guest.fake import ScriptedCommunicator, Step
from ruddervirt.hypervisor.driver import DomainState
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.fake_images import FakeImages
from ruddervirt.manifest import parse

PREFIX = "rvt-"
KEY = "b1"


def vm_yaml(name: str, steps: str = "", *, extra: str = "") -> str:
    """One VM built from the fake parent template, with `steps` (YAML list items, indented
    by 6) as its provisioners."""
    text = f"""\
  - name: {name}
    source: {{buildRef: {{name: base}}}}
    resources: {{cpu: 1, memory: 256Mi}}
    cloudInit: {{}}
{extra}"""
    if steps:
        text += "    provisioners:\n" + steps
    return text


def manifest_text(*vms: str, top: str = "") -> str:
    return f"{top}vms:\n" + "".join(vms)


class RecordingReporter(NullReporter):
    """Records phases, step events and logs; answers cancel polls and handbuild decisions
    from what the test set (``cancel_reason``, ``decide``)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple] = []
        self.cancel_reason: str | None = None
        self.decisions: dict[tuple[str, int], tuple[str, str]] = {}
        self.waiting = threading.Event()

    def build_phase(self, phase: BuildPhase) -> None:
        self.events.append(("build", phase))

    def vm_phase(self, vm: str, phase: VMPhase, message: str = "") -> None:
        self.events.append(("phase", vm, phase))

    def step_started(self, vm: str, index: int) -> None:
        self.events.append(("started", vm, index))

    def step_waiting(self, vm: str, index: int) -> None:
        self.events.append(("waiting", vm, index))
        self.waiting.set()

    def step_finished(self, vm, index, *, ok, exit_code=None, message="") -> None:
        self.events.append(("finished", vm, index, ok, exit_code, message))

    def step_reused(self, vm, index, *, key, from_build, saved_s) -> None:
        self.events.append(("reused", vm, index, from_build))

    def poll(self) -> str | None:
        return self.cancel_reason

    def user_decision(self, vm: str, index: int) -> tuple[str, str] | None:
        return self.decisions.get((vm, index))

    def decide(self, vm: str, index: int, what: str, reason: str = "") -> None:
        self.decisions[(vm, index)] = (what, reason)

    # -- reading it back ------------------------------------------------------------------
    def finished(self, vm: str = "web") -> list[tuple]:
        """(index, ok, exit_code, message) of every finished step of `vm`."""
        return [e[2:] for e in self.events if e[0] == "finished" and e[1] == vm]

    def phases(self, vm: str = "web") -> list[str]:
        return [e[2] for e in self.events if e[0] == "phase" and e[1] == vm]

    def text(self) -> list[str]:
        return [text for _vm, _stream, text in self.lines]

    def stream_of(self, line: str) -> str | None:
        return next((stream for _vm, stream, text in self.lines if text == line), None)


@dataclass
class FakeBuild:
    """One build's fakes. ``script(vm, *steps)`` sets what a VM's guest does between its
    wait and its generalization and power-off (``bare=True``: ``steps`` are the whole script)."""

    tmp_path: Path
    hv: FakeHypervisor = field(default_factory=lambda: FakeHypervisor(name_prefix=PREFIX))
    images: FakeImages = field(default_factory=FakeImages)
    reporter: RecordingReporter = field(default_factory=RecordingReporter)
    guests: dict[str, ScriptedCommunicator] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    key: str = KEY  # the build's key (another key: another build on the same storage)

    def domain(self, vm: str = "web") -> str:
        return f"{PREFIX}{self.key}-{vm}"

    def powered_off(self, vm: str = "web") -> Step:
        """The guest's own poweroff: the domain turns SHUTOFF."""
        return fake.power_off(then=lambda: self.hv.set_state(self.domain(vm), DomainState.SHUTOFF))

    @staticmethod
    def generalized(*removed: str, exit_status: int = 0, stderr: Sequence[str] = ()) -> Step:
        """The generalization script runs, printing ``removed`` (one line per item)."""
        return fake.run(generalize.MARKER, *removed, exit_status=exit_status, stderr=stderr)

    def script(
        self,
        vm: str,
        *steps: Step,
        bare: bool = False,
        fails: bool = False,
        generalized: bool = True,
    ) -> ScriptedCommunicator:
        """``fails``: the build stops during ``steps``, so the guest is never powered off.
        ``generalized``: the generalization script runs (printing nothing) before the
        power-off (False: the VM says ``generalize: false``)."""
        end = (self.generalized(),) if generalized else ()
        end = () if fails else (*end, self.powered_off(vm))
        full: Sequence[Step] = steps if bare else (fake.wait(), *steps, *end)
        self.guests[vm] = ScriptedCommunicator(full)
        return self.guests[vm]

    def communicator(self, endpoint: Endpoint) -> ScriptedCommunicator:
        self.endpoints[endpoint.vm] = endpoint
        return self.guests[endpoint.vm]

    def config(self) -> EngineConfig:
        return EngineConfig(
            storage_root=self.tmp_path / "storage",
            domain_type="qemu",
            name_prefix=PREFIX,
            allow_internet=False,
            guest_poweroff_timeout_s=0.3,
            acpi_timeout_s=0.3,
        )

    def parent(self, vm: str) -> Path:
        path = self.tmp_path / "templates" / vm / "root.qcow2"
        if not path.exists():
            path.parent.mkdir(parents=True)
            self.images.create_blank(path, 64 * 2**20)
        return path

    def run(
        self,
        text: str,
        *,
        use_cache: bool = False,
        build_id: int | None = None,
        cache_scope: str = "",
        keep_failed_vm: bool = False,
    ) -> BuildResult:
        manifest = parse(text)
        plan = BuildPlan(
            key=self.key,
            manifest=manifest,
            workdir=self.tmp_path / ("work" if self.key == KEY else f"work-{self.key}"),
            parents={vm.name: [self.parent(vm.name)] for vm in manifest.vms},
            use_cache=use_cache,
            build_id=build_id,
            cache_scope=cache_scope,
            keep_failed_vm=keep_failed_vm,
        )
        ctx = BuildContext(
            config=self.config(),
            hv=self.hv,
            reporter=self.reporter,
            communicator=self.communicator,
            images=self.images,
        )
        return run_build(plan, ctx)
