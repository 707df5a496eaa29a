"""Making the records agree with the host after a crash.

A worker that dies mid-build leaves a build that claims to be running, and domains,
networks and disks on the host. `reconcile` finds such builds (their worker process is
gone, or their heartbeat stopped), marks them failed with the reason, and removes what
they left behind; it also removes leftovers of builds that are already over, and the
disks of failed builds once their inspection time has passed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

from builds.models import ACTIVE, Build, BuildStatus
from builds.runner import append_log, remove_build_disks
from builds.transitions import InvalidTransition, transition
from ruddervirt.engine.cleanup import remove_domain
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.runtime import engine_config, worker_alive

log = logging.getLogger(__name__)
STALE_AFTER = timedelta(seconds=90)


def dead_builds() -> list[tuple[Build, str]]:
    now = timezone.now()
    found = []
    for build in Build.objects.filter(status__in=ACTIVE).exclude(worker=""):
        alive = worker_alive(build.worker)
        stale = build.heartbeat_at is None or now - build.heartbeat_at > STALE_AFTER
        if alive is False:
            found.append((build, f"the worker running it ({build.worker}) is gone"))
        elif alive is None and stale:
            found.append((build, f"the worker running it ({build.worker}) stopped answering"))
    return found


def reconcile(hv: Hypervisor) -> list[str]:
    """Fix what can be fixed; returns one line per action, for the log and the command."""
    actions: list[str] = []
    for build, reason in dead_builds():
        try:
            transition(build, BuildStatus.FAILED, error=f"interrupted: {reason}")
        except InvalidTransition:
            continue
        append_log(build, f"build failed: interrupted: {reason}; cleaning up")
        Build.objects.filter(pk=build.pk).update(keep_disks_until=timezone.now())
        actions.append(f"build {build.pk}: marked failed ({reason})")
    actions += remove_leftovers(hv)
    for build in Build.objects.filter(
        disks_removed=False, keep_disks_until__lt=timezone.now(), status=BuildStatus.FAILED
    ):
        remove_build_disks(build)
        actions.append(f"build {build.pk}: removed the kept disks")
    for line in actions:
        log.info(line)
    return actions


def remove_leftovers(hv: Hypervisor) -> list[str]:
    """Domains and networks of builds that are over (or unknown to the database)."""
    config = engine_config()
    active = {
        f"b{pk}" for pk in Build.objects.filter(status__in=ACTIVE).values_list("pk", flat=True)
    }
    actions = []
    for domain in hv.list_domains(config.name_prefix):
        meta = domain.metadata
        if meta.get("kind") == "build" and meta.get("build") not in active:
            remove_domain(hv, domain.name)
            actions.append(f"removed leftover domain {domain.name}")
    for network in hv.list_networks(config.name_prefix):
        meta = network.metadata
        if meta.get("kind") == "build" and meta.get("build") not in active:
            if network.active:
                hv.destroy_network(network.name)
            hv.undefine_network(network.name)
            actions.append(f"removed leftover network {network.name}")
    return actions
