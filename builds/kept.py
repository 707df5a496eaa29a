"""A failed build's VM kept running for inspection (docs/builds.md#keeping-a-failed-vm).

A build asked to (Build.keep_failed_vm_s > 0) leaves the VM whose own failure failed it
running, with its console and the build's networks (the engine's BuildPlan.keep_failed_vm,
on the build's last attempt only). Once the build is Failed, `settle` records which VM
stayed and until when; the build's owner tag stays live until then (recovery.live_build_keys),
so the reconcile's leftover pass never takes it early, and the builds' sweep (`remove_expired`)
removes it once its time is over, from the build's row and the domains' owner tag: a worker
that died after keeping it leaves nothing forever. "Clean up now" (`remove_kept_vm`) removes
it at once; so does a resume of the build, before the resume starts.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from builds.models import Build, BuildStatus, BuildVM
from builds.reporting import append_log
from ruddervirt.engine.cleanup import owned, remove_owned
from ruddervirt.hypervisor.driver import DomainState, Hypervisor, HypervisorError
from ruddervirt.manifest import Manifest
from ruddervirt.manifest.limits import duration_text
from ruddervirt.manifest.units import parse_duration

OWNER_KIND = "build"  # the domains' and networks' metadata kind (ruddervirt.engine.build)


class KeepRefused(ValueError):
    """A keep time that is not a duration, or longer than this host allows."""


def keep_seconds(value: str | int | None) -> int:
    """Seconds to keep a failed VM for a request: ``None``/"" (asked without a time) is
    RUDDERVIRT_FAILED_VM_KEEP_S; "0" is not kept; "30m", "1h", "90s" or plain seconds
    ("1800", or the int 1800). KeepRefused past RUDDERVIRT_FAILED_VM_KEEP_MAX_S or for
    anything else."""
    cap = settings.RUDDERVIRT_FAILED_VM_KEEP_MAX_S
    if value is None or (isinstance(value, str) and not value.strip()):
        return min(settings.RUDDERVIRT_FAILED_VM_KEEP_S, cap)
    text = str(value).strip()
    try:
        if isinstance(value, int) and value < 0:
            raise ValueError(value)
        seconds = int(text) if text.isdigit() else int(parse_duration(text))
    except ValueError:
        raise KeepRefused(
            f"keep the failed VM: {text!r} is not a duration (e.g. 30m, 1h, 1800s)"
        ) from None
    if seconds > cap:
        raise KeepRefused(
            f"keep the failed VM: {duration_text(seconds)} is longer than this host allows "
            f"({duration_text(cap)}, RUDDERVIRT_FAILED_VM_KEEP_MAX_S)"
        )
    return seconds


def owner_of(build: Build) -> dict[str, str]:
    return {"kind": OWNER_KIND, "build": f"b{build.pk}"}


def settle(build: Build, hv: Hypervisor, manifest: Manifest) -> None:
    """After the build's last attempt: record the VMs it kept running (a Failed build that
    asked to keep one), or remove whatever of it is still there (any other end: a cancel
    that won a race with the failure keeps nothing)."""
    build.refresh_from_db()
    prefix = settings.RUDDERVIRT_NAME_PREFIX
    running = {
        d.metadata.get("vm", ""): d.name
        for d in hv.list_domains(prefix)
        if owned(d.metadata, owner_of(build)) and d.state == DomainState.RUNNING
    }
    if build.status != BuildStatus.FAILED or not build.keep_failed_vm_s or not running:
        if running:
            remove_owned(hv, prefix, owner_of(build))
        return
    until = timezone.now() + timedelta(seconds=build.keep_failed_vm_s)
    memory = {vm.name: vm.resources.memory for vm in manifest.for_build().vms}
    kept_memory = sum(memory.get(name, 0) for name in running)
    BuildVM.objects.filter(build=build, name__in=running).update(kept=True)
    keep_disks = max(build.keep_disks_until or until, until)  # the VM runs on them
    Build.objects.filter(pk=build.pk).update(
        kept_vm_until=until, keep_disks_until=keep_disks, kept_memory_bytes=kept_memory
    )
    for name, domain in sorted(running.items()):
        append_log(
            build,
            f"the failed VM {name} is kept running for inspection for "
            f"{duration_text(build.keep_failed_vm_s)}, until {until:%H:%M:%S} UTC "
            f"(domain {domain}): open its console from the build page; Clean up now "
            "removes it earlier",
            vm=name,
        )


def remove_kept_vm(build: Build, hv: Hypervisor, *, why: str) -> list[str]:
    """Remove the build's kept VMs and networks now (Clean up now, a resume, the sweep);
    what went. A build with nothing kept is left as it is."""
    if build.kept_vm_until is None:
        return []
    removed = remove_owned(hv, settings.RUDDERVIRT_NAME_PREFIX, owner_of(build))
    BuildVM.objects.filter(build=build, kept=True).update(kept=False)
    Build.objects.filter(pk=build.pk).update(kept_vm_until=None, kept_memory_bytes=0)
    build.kept_vm_until = None
    append_log(build, f"the kept VM was removed ({why})" + _listed(removed))
    return removed


def remove_expired(hv: Hypervisor) -> list[str]:
    """The builds' sweep: kept VMs whose time is over go (with the build's networks)."""
    actions = []
    for build in Build.objects.filter(kept_vm_until__lte=timezone.now()):
        try:
            remove_kept_vm(build, hv, why="its time to be kept is over")
        except HypervisorError as exc:
            actions.append(f"build {build.pk}: could not remove the kept VM yet: {exc}")
            continue
        actions.append(f"build {build.pk}: removed the kept VM (its time is over)")
    return actions


def kept_build_keys() -> set[str]:
    """The owner keys ("b<id>") of builds whose kept VM's time is not over."""
    kept = Build.objects.filter(kept_vm_until__gt=timezone.now())
    return {f"b{pk}" for pk in kept.values_list("pk", flat=True)}


def kept_now() -> Q:
    """Builds with a VM kept now (for the capacity count)."""
    return Q(kept_vm_until__gt=timezone.now())


def _listed(removed: list[str]) -> str:
    return ": " + ", ".join(removed) if removed else ""
