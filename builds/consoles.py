"""A build's VM consoles: who may open them, and what the build page shows of a handbuild
step (its instructions and how long is left).

`resolve` is the "build" kind of the console registry (consoles.registry).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.urls import reverse
from django.utils import timezone

from builds.models import Build, BuildStep, BuildVM, StepStatus, VMPhase
from modules.services import can_manage

# Phases in which a build VM's domain is (normally) running and has a console.
CONSOLE_PHASES = frozenset(
    {
        VMPhase.BOOTING,
        VMPhase.BOOT_COMMAND,
        VMPhase.WAITING_FOR_SSH,
        VMPhase.PROVISIONING,
        VMPhase.SHUTTING_DOWN,
    }
)


# Phases in which the build page shows the VM's screen by itself: the boot command being
# typed, and the wait for SSH (an installer at work, or a guest that never comes up).
LIVE_CONSOLE_PHASES = frozenset({VMPhase.BOOT_COMMAND, VMPhase.WAITING_FOR_SSH})


def resolve(user: Any, build_id: int, vm_name: str) -> str:
    """The domain of VM `vm_name` of build `build_id`, for its module's owner and for
    administrators (PermissionDenied for everyone else). Http404 when there is no such
    build or VM, or when the build has finished (its VMs are gone), unless the VM failed
    the build and is kept running for inspection (builds.kept) and its time is not over:
    an open console is closed at the next access check after that."""
    build = Build.objects.select_related("module").filter(pk=build_id).first()
    if build is None:
        raise Http404("no such build")
    if not can_manage(user, build.module):
        raise PermissionDenied("only the module's owner and administrators see its build VMs")
    vm = BuildVM.objects.filter(build=build, name=vm_name).first()
    if vm is None:
        raise Http404(f"build {build_id} has no VM {vm_name!r}")
    if build.is_terminal and not (vm.kept and build.has_kept_vm):
        raise Http404(f"build {build_id} has finished: its VMs are gone")
    # The engine names domains before it reports them; the page may ask that early.
    return vm.domain_name or f"{settings.RUDDERVIRT_NAME_PREFIX}b{build.pk}-{vm.name}"


def console_url(build: Build, vm: BuildVM) -> str | None:
    """The console page of a build VM while it runs (or is kept after the build failed),
    else None."""
    if build.is_terminal and vm.kept and build.has_kept_vm:
        return reverse("consoles:page", args=["build", build.pk, vm.name])
    if build.is_terminal or vm.phase not in CONSOLE_PHASES:
        return None
    return reverse("consoles:page", args=["build", build.pk, vm.name])


@dataclass(frozen=True)
class HandbuildWait:
    vm: str
    index: int
    instructions: str
    waiting_since: datetime | None
    deadline: datetime | None  # when the engine gives up waiting (step or build timeout)

    def as_json(self, now: datetime) -> dict[str, Any]:
        left = None if self.deadline is None else max((self.deadline - now).total_seconds(), 0)
        return {
            "instructions": self.instructions,
            "waiting_since": self.waiting_since.isoformat() if self.waiting_since else None,
            "deadline": self.deadline.isoformat() if self.deadline else None,
            "seconds_left": None if left is None else round(left, 1),
        }


def handbuild_waits(build: Build) -> list[HandbuildWait]:
    """The handbuild steps of `build` waiting for a person now."""
    steps = list(
        BuildStep.objects.filter(vm__build=build, status=StepStatus.WAITING_FOR_USER)
        .select_related("vm")
        .order_by("vm__index", "index")
    )
    if not steps:
        return []
    attempt_start = _attempt_start(build)
    return [_wait(build, step, attempt_start) for step in steps]


def _wait(build: Build, step: BuildStep, attempt_start: datetime | None) -> HandbuildWait:
    # The engine's clock (engine.vm.run_step): the step's own timeout from its start, never
    # past the build timeout counted from the attempt's start. Pausing spends both.
    limits = []
    if step.started_at and step.timeout_s:
        limits.append(step.started_at + timedelta(seconds=step.timeout_s))
    if attempt_start:
        limits.append(attempt_start + timedelta(seconds=build.timeout_s))
    return HandbuildWait(
        vm=step.vm.name,
        index=step.index,
        instructions=step.instructions,
        waiting_since=step.started_at,
        deadline=min(limits) if limits else None,
    )


def _attempt_start(build: Build) -> datetime | None:
    """When this attempt's build clock started. The first attempt's is the build's start;
    a retry's is approximated by its first VM's start (a second or so late)."""
    if build.attempt == 1:
        return build.started_at
    starts = BuildVM.objects.filter(build=build, started_at__isnull=False).values_list(
        "started_at", flat=True
    )
    return min(starts, default=None)


def page_extras(build: Build) -> dict[str, Any]:
    """What the live build page needs beyond build_summary: console links per VM, the VMs
    whose screen the page shows by itself (typing the boot command, waiting for SSH), and
    the handbuild steps waiting (instructions, deadline, seconds left), with the server's
    time."""
    now = timezone.now()
    vms = list(BuildVM.objects.filter(build=build))
    urls = {vm.name: console_url(build, vm) for vm in vms}
    live = {vm.name for vm in vms if urls[vm.name] and vm.phase in LIVE_CONSOLE_PHASES}
    waits = {(w.vm, w.index): w.as_json(now) for w in handbuild_waits(build)}
    return {"now": now.isoformat(), "console_urls": urls, "live_consoles": live, "waits": waits}
