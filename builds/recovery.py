"""The builds' part of the reconcile (jobs.reconcile runs it after a crash and periodically).

A build whose worker died is settled by the runs' reconcile (builds.runner.interrupted);
its domains and networks are leftovers of the owner tag "build" once it is over
(`live_build_keys`). What is left here: a failed VM kept running for inspection, and the
disks of failed builds, kept for inspection, are removed once their time has passed.
"""

from __future__ import annotations

from django.utils import timezone

from builds import kept
from builds.models import ACTIVE, Build, BuildStatus
from builds.runner import remove_build_disks
from ruddervirt.hypervisor.driver import Hypervisor

OWNER_TAG = "build"  # the domains' and networks' metadata kind (ruddervirt.engine.build)


def live_build_keys() -> set[str]:
    """The owner keys ("b<id>") of builds whose domains and networks must stay: those
    queued or running, and failed builds whose kept VM's time is not over (builds.kept)."""
    active = Build.objects.filter(status__in=ACTIVE).values_list("pk", flat=True)
    return {f"b{pk}" for pk in active} | kept.kept_build_keys()


def sweep(hv: Hypervisor) -> list[str]:
    """The builds' part of every reconcile: kept VMs whose time is over, then kept disks."""
    return kept.remove_expired(hv) + remove_expired_disks(hv)


def remove_expired_disks(hv: Hypervisor) -> list[str]:
    actions = []
    for build in Build.objects.filter(
        disks_removed=False, keep_disks_until__lt=timezone.now(), status=BuildStatus.FAILED
    ).exclude(kept.kept_now()):  # a kept VM runs on them
        remove_build_disks(build)
        actions.append(f"build {build.pk}: removed the kept disks")
    return actions
