"""Whether a build may start now: how many its requester has going, and the host's room.

A build is refused at submit, with what is missing, when it does not fit now; it is never
queued to wait for room (a queued build that cannot start would hold a worker and surprise
its instructor hours later). Settings: RUDDERVIRT_MAX_CONCURRENT_BUILDS, and those of
ruddervirt.capacity for memory and disk.

What queued and running builds hold of the host is promised here (`promised_by_builds`,
registered with ruddervirt.capacity by BuildsConfig.ready): a build VM's memory is counted
in full while the build lasts (QEMU touches it as the guest runs), and its disks at their
full declared size (they are then flattened), less what its folder allocates already. A
failed VM kept running for inspection holds its memory until it is removed.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from builds import kept
from builds.models import ACTIVE, Build
from builds.runner import build_workdir
from ruddervirt import capacity
from ruddervirt.engine.clone import disk_usage
from ruddervirt.manifest import Manifest


def refusal(manifest: Manifest, *, user) -> str | None:
    """Why `user` may not start a build of `manifest` now, or None when it may.

    Call it inside the transaction that creates the build: it locks the user's row, so two
    submissions of one person are counted one after the other (SQLite's IMMEDIATE
    transactions serialise every writer anyway)."""
    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    limit = settings.RUDDERVIRT_MAX_CONCURRENT_BUILDS
    mine = Build.objects.filter(requested_by=user)
    going = mine.filter(status__in=ACTIVE).count()
    keeping = mine.filter(kept.kept_now()).count()  # a kept failed VM holds the host too
    if going + keeping >= limit:
        kept_note = f" and {keeping} keeping a failed VM" if keeping else ""
        return (
            f"you have {going} build(s) queued or running{kept_note}, and one person may have "
            f"at most {limit} at once (RUDDERVIRT_MAX_CONCURRENT_BUILDS): wait for one to "
            "finish, cancel one"
            + (", or clean up a kept VM (Clean up now on its build's page)" if keeping else "")
        )
    problems = capacity.build_problems(manifest)
    if problems:
        return "this build does not fit on the host now: " + "; ".join(problems)
    return None


def promised_by_builds() -> capacity.Promised:
    """What every queued or running build holds: its VMs' memory, and what its disks may
    still grow by (their full size minus what its folder allocates now, never below 0). From
    the rows (Build.memory_bytes, disk_bytes: the manifest as it was submitted), never from
    the manifest text again."""
    memory = disk = 0
    builds = Build.objects.filter(status__in=ACTIVE).annotate(vm_count=Count("vms"))
    for build in builds:
        build_memory, build_disk = capacity.build_cost(
            build.memory_bytes, build.disk_bytes, build.vm_count
        )
        folder = build_workdir(build.pk)
        used = disk_usage(folder) if folder.exists() else 0
        memory += build_memory
        disk += max(0, build_disk - used)
    # A failed VM kept for inspection runs on: its memory is held until it goes (builds.kept;
    # its disks are allocated already, and the host's free space counts them).
    kept_vms = Build.objects.filter(kept.kept_now()).annotate(
        kept_count=Count("vms", filter=Q(vms__kept=True))
    )
    for build in kept_vms:
        memory += capacity.build_cost(build.kept_memory_bytes, 0, build.kept_count)[0]
    return capacity.Promised(memory=memory, disk=disk)
