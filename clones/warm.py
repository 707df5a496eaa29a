"""Warm images of module versions: who may make and drop them, the job that makes one,
and what a crash leaves behind.

A warm image (ruddervirt.engine.warm) is made by a job of kind "warm.make" on the clones
queue (the one runner, jobs.runner), asked for on the version's page or with
``manage.py warm_image make``. Its status: Making (the job runs), Ready (clones can resume
it), Failed (the reason in ``error``; its files are gone). Only the module's owner (and
administrators) make or drop it; it cannot be dropped while a clone stands on its disks.
The instance the image is made of carries the owner tag "warm" (key ``w<id>``) while it
runs: after a crash, jobs.reconcile removes its domains and networks, and :func:`sweep`
its folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from django.db import transaction
from django.utils import timezone

import jobs.runner as jobs
from accounts.roles import is_admin
from builds.models import ModuleVersion
from clones import capacity
from clones.jobs import QUEUE
from clones.models import Clone, WarmImage, WarmStatus
from jobs.models import Operation
from jobs.registry import Result
from modules.services import can_manage
from ruddervirt.engine import warm as engine
from ruddervirt.engine.clone import CloneError, CloneRequest, WarmSource
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.runtime import engine_config, get_hypervisor
from ruddervirt.spec import SpecError

log = logging.getLogger(__name__)
KIND_MAKE = "warm.make"
JOB_TIMEOUT_S = 1800
W = WarmStatus


class WarmNotAllowed(Exception):
    """The request makes no sense now, or is not this user's to make; str() says why."""


# --- where and who ---------------------------------------------------------------------
def warm_root() -> Path:
    return engine_config().storage_root / "warm"


def folder_of(image: WarmImage) -> Path:
    return warm_root() / str(image.pk)


def source_of(image: WarmImage) -> WarmSource:
    """What a warm clone reads of the image (engine.clone.WarmSource)."""
    return WarmSource(folder_of(image))


def can_manage_warm(user, version: ModuleVersion) -> bool:
    """The module's owner and administrators."""
    if not getattr(user, "is_authenticated", False):
        return False
    return is_admin(user) or can_manage(user, version.module)


def ready_image(version: ModuleVersion) -> WarmImage | None:
    return WarmImage.objects.filter(version=version, status=W.READY).first()


def request(version: ModuleVersion, *, by, queue: bool = True) -> WarmImage:
    """A new warm image of `version`, made by a job once the transaction commits (queue=False:
    the caller runs it, see :func:`run_here`). A failed one is replaced; a Ready or Making
    one is refused, as is a version that does not fit on the host for one more clone."""
    if not can_manage_warm(by, version):
        raise WarmNotAllowed(f"only the owner of {version.module} can make its warm images")
    try:
        version.version_spec  # noqa: B018  (a version without a readable record cannot clone)
    except SpecError as exc:
        raise WarmNotAllowed(str(exc)) from exc
    existing = WarmImage.objects.filter(version=version).first()
    if existing is not None and existing.status != W.FAILED:
        raise WarmNotAllowed(f"{version} has a warm image already ({existing.status})")
    estimate = capacity.estimate(version, 1, extra_disk=state_bytes(version))
    if not estimate.fits:
        raise WarmNotAllowed("; ".join(estimate.problems))
    with transaction.atomic():
        if existing is not None:
            existing.delete()
        image = WarmImage.objects.create(version=version, created_by=by)
        jobs.submit(KIND_MAKE, image, by=by, queue=queue)
    return image


def state_bytes(version: ModuleVersion) -> int:
    """At most what the saved states take on disk: the VMs' memory."""
    return sum(vm.memory for vm in version.version_spec.vms)


def drop(image: WarmImage, *, by) -> None:
    """Remove the image's files and its row. Refused while it is being made, or while a
    clone stands on it (delete those clones, or reprovision them cold, first)."""
    if not can_manage_warm(by, image.version):
        raise WarmNotAllowed(f"only the owner of {image.version.module} can drop its warm image")
    if image.status == W.MAKING:
        raise WarmNotAllowed("the warm image is being made; drop it once it is ready or failed")
    using = Clone.objects.filter(warm_image=image).count()
    if using:
        raise WarmNotAllowed(
            f"{using} clone(s) stand on this warm image's disks: delete them, or reprovision "
            "them cold, first"
        )
    engine.drop_image(folder_of(image))
    image.delete()


def run_here(image: WarmImage, *, hv: Hypervisor | None = None) -> WarmImage:
    """Make the image now, in this process, through the one runner (its queued run)."""
    op = jobs.open_run(KIND_MAKE, image)
    if op is not None:
        jobs.run(op.pk, hv=hv)
    return WarmImage.objects.get(pk=image.pk)


def make_and_wait(
    version: ModuleVersion, *, by, timeout: float = JOB_TIMEOUT_S, poll_s: float = 1.0
) -> WarmImage:
    """Make the version's warm image and return it once it is Ready or Failed: by a worker
    of the clones queue when one listens, else in this process (the CLI's way)."""
    from builds.jobs import workers_listening

    queued = workers_listening(QUEUE) > 0
    image = request(version, by=by, queue=queued)
    if not queued:
        return run_here(image)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image.refresh_from_db()
        if image.status != W.MAKING:
            return image
        time.sleep(poll_s)
    raise WarmNotAllowed(f"the warm image of {version} was not made within {timeout:g} s")


def describe(image: WarmImage) -> dict:
    """A JSON-ready view of the image (the CLI's)."""
    return {
        "id": image.pk,
        "version": str(image.version),
        "status": image.status,
        "size_bytes": image.size_bytes,
        "made_in_s": round(image.made_in_s, 1) if image.made_in_s is not None else None,
        "ready_s": {vm: round(s, 1) for vm, s in image.ready_s.items()},
        "clones": image.clones.count(),
        **({"error": image.error} if image.error else {}),
    }


# --- the job ---------------------------------------------------------------------------
def make_job(op: Operation, image: WarmImage, *, hv: Hypervisor | None = None, echo=None) -> Result:
    """The job of "warm.make": boot the version once, wait until ready, save, freeze."""
    image = WarmImage.objects.select_related("version").get(pk=image.pk)
    if image.status != W.MAKING:
        return Result(outcome=image.status, skipped=True)
    hv = hv or get_hypervisor()
    folder = folder_of(image)
    try:
        req = CloneRequest(
            key=image.key,
            spec=image.version.version_spec,
            workdir=folder,
            title=f"warm image of {image.version}",
            kind=engine.KIND,
        )
        engine.drop_image(folder)  # a leftover of an earlier image with this id
        engine.make_folder(folder)
        made = engine.make_image(req, hv=hv, config=engine_config())
    except (CloneError, SpecError, OSError) as exc:
        engine.drop_image(folder)
        _settle(image, W.FAILED, error=str(exc))
        return Result(outcome=W.FAILED, error=str(exc))
    _settle(
        image,
        W.READY,
        size_bytes=made.size_bytes,
        made_in_s=made.seconds,
        ready_s=made.ready_s,
        made_at=timezone.now(),
    )
    return Result(outcome=W.READY)


def _settle(image: WarmImage, status: str, **fields) -> bool:
    """Making -> `status` (a conditional UPDATE: a run already called interrupted stays so)."""
    return bool(
        WarmImage.objects.filter(pk=image.pk, status=W.MAKING).update(status=status, **fields)
    )


def interrupted(image: WarmImage, reason: str) -> str | None:
    """An image whose worker died: Failed with the reason, its folder removed (jobs.reconcile
    removes its domains and networks: their key is no longer live)."""
    if not _settle(image, W.FAILED, error=reason):
        return None
    engine.drop_image(folder_of(image))
    return f"warm image {image.pk}: marked failed ({reason})"


def unqueued(image: WarmImage, reason: str) -> None:
    _settle(image, W.FAILED, error=reason)


def live_keys() -> set[str]:
    """The owner keys ("w<id>") whose instance may be running: images being made."""
    return {
        f"w{pk}" for pk in WarmImage.objects.filter(status=W.MAKING).values_list("pk", flat=True)
    }


def sweep(_hv: Hypervisor) -> list[str]:
    """Folders of warm images that are gone, failed or were never finished."""
    keep = {
        str(pk)
        for pk in WarmImage.objects.filter(status__in=[W.READY, W.MAKING]).values_list(
            "pk", flat=True
        )
    }
    root = warm_root()
    actions = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and folder.name.isdigit() and folder.name not in keep:
            engine.drop_image(folder)
            actions.append(f"removed leftover warm image folder {folder}")
    return actions


def register(registry) -> None:
    """The warm image's job kind, owner tag and sweep (ClonesConfig.ready)."""
    registry.register(
        registry.Kind(
            name=KIND_MAKE,
            label="make warm image",
            model=WarmImage,
            queue=QUEUE,
            run=make_job,
            timeout_s=lambda image: JOB_TIMEOUT_S,
            interrupted=interrupted,
            unqueued=unqueued,
        )
    )
    registry.register_owner(registry.Owner(tag=engine.KIND, key_field="warm", live=live_keys))
    registry.register_sweep("warm", sweep)
