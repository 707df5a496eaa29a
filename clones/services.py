"""Clones and classes: where the ORM meets the clone pipeline.

Views and management commands call these functions. State changes happen here (through
clones.transitions) before any job is queued, so two conflicting requests cannot both
proceed: the second one finds the clone busy. The work itself (disks, networks, domains)
is done by clones.runner, in an RQ job on the "clones" queue or in-process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

import jobs.runner as jobs
from accounts.roles import is_admin
from builds import refs
from builds.models import ModuleVersion
from clones import capacity, readiness, warm
from clones.jobs import kind_name
from clones.models import (
    AT_REST,
    Class,
    ClassMembership,
    Clone,
    CloneStatus,
    CloneStatusChange,
    CloneVM,
    StartMode,
)
from clones.transitions import InvalidTransition, transition
from modules.lifecycle import record_created
from modules.services import can_manage
from ruddervirt.spec import SpecError, record_json

log = logging.getLogger(__name__)

ACTIONS = ("start", "stop", "restart", "reprovision", "delete")
STUDENT_ACTIONS = ("start", "stop", "restart")
# Where each action moves the clone before its job runs.
FIRST_STATUS = {
    "start": CloneStatus.STARTING,
    "stop": CloneStatus.STOPPING,
    "restart": CloneStatus.STOPPING,
    "reprovision": CloneStatus.PROVISIONING,
    "delete": CloneStatus.DELETING,
}
ACTIVITY_THROTTLE_S = 30


class CloneNotAllowed(Exception):
    """The request makes no sense now, or is not this user's to make; str() says why."""


class CapacityRefused(CloneNotAllowed):
    def __init__(self, estimate: capacity.Estimate) -> None:
        super().__init__("; ".join(estimate.problems))
        self.estimate = estimate


# --- who may do what -------------------------------------------------------------------
def can_teach(user, klass: Class) -> bool:
    """Administrators, the class's owner and its co-instructors."""
    if not getattr(user, "is_authenticated", False):
        return False
    if is_admin(user) or klass.owner_id == user.pk:
        return True
    return klass.instructors.filter(pk=user.pk).exists()


def is_enrolled_student(user, clone: Clone) -> bool:
    """`user` is the clone's student, with an active account, and still in its class: a
    student removed from the class keeps no access to the clone (nor its consoles)."""
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if clone.student_id != user.pk:
        return False
    return ClassMembership.objects.filter(klass_id=clone.klass_id, student_id=user.pk).exists()


def can_use(user, clone: Clone) -> bool:
    """The clone's student (while in its class), and whoever teaches its class."""
    if not getattr(user, "is_authenticated", False):
        return False
    return is_enrolled_student(user, clone) or can_teach(user, clone.klass)


def classes_visible_to(user) -> QuerySet[Class]:
    qs = Class.objects.select_related("owner")
    if is_admin(user):
        return qs
    return qs.filter(Q(owner=user) | Q(instructors=user)).distinct()


def clones_of(user) -> QuerySet[Clone]:
    """A student's own clones (My labs), in the classes they are still in."""
    return (
        Clone.objects.filter(student=user, klass__memberships__student=user)
        .select_related("version__module", "klass")
        .prefetch_related("vms")
        .order_by("-created_at")
    )


def versions_for(user) -> QuerySet[ModuleVersion]:
    """The module versions `user` may launch: those of modules they manage."""
    qs = ModuleVersion.objects.select_related("module").order_by("module__name", "-number")
    if is_admin(user):
        return qs
    return qs.filter(module__owner=user)


# --- classes and versions --------------------------------------------------------------
def create_class(*, name: str, owner, adhoc: bool = False) -> Class:
    name = name.strip()
    if not name:
        raise CloneNotAllowed("a class needs a name")
    return Class.objects.create(name=name[:100], owner=owner, adhoc=adhoc)


def resolve_version(ref: str, *, user) -> ModuleVersion:
    """`name` (its newest version) or `name@N`, of a module `user` may manage. For any
    other module, existing or not, the same refusal (builds.refs.UNUSABLE)."""
    name, _, number = ref.partition("@")
    if number and not number.isdigit():
        raise CloneNotAllowed(f"{ref!r}: the version is a number, as in {name}@2")
    try:
        return refs.find_version(user, name, int(number) if number else None)
    except refs.RefRefused as exc:
        raise CloneNotAllowed(str(exc)) from None


def version_in_use(version: ModuleVersion) -> bool:
    """Whether a clone still uses the version's templates (they must not be deleted)."""
    return Clone.objects.filter(version=version).exists()


# --- launching -------------------------------------------------------------------------
def launch(
    klass: Class,
    version: ModuleVersion,
    *,
    by,
    students: Sequence | None = None,
    full_copy: bool = False,
    expires_at: datetime | None = None,
    inactivity_s: int | None = None,
    queue: bool = True,
    start: str | None = None,
) -> list[Clone]:
    """One clone of `version` per student of `klass` (or of `students`) who has none of
    it yet, after checking the class fits on the host (CapacityRefused, before anything is
    created). The clones are provisioned and started by jobs once the transaction commits
    (queue=False: the caller runs them, see clones.runner.run_inline). `start` is "warm"
    (resume the version's warm image; a cold boot while it has none), "cold", or None:
    warm when the version has a ready warm image."""
    if start not in (None, *StartMode.values):
        raise CloneNotAllowed(f"start must be warm or cold, not {start!r}")
    if not can_teach(by, klass):
        raise CloneNotAllowed("only the class's instructors can launch for it")
    if not (is_admin(by) or can_manage(by, version.module)):
        raise CloneNotAllowed(f"{version} belongs to another instructor's module")
    members = list(students) if students is not None else list(klass.students.all())
    if not members:
        raise CloneNotAllowed(f"class {klass} has no students yet")
    have = set(
        Clone.objects.filter(klass=klass, version=version).values_list("student_id", flat=True)
    )
    todo = [s for s in members if s.pk not in have]
    if not todo:
        raise CloneNotAllowed(f"every student of {klass} already has a clone of {version}")
    try:
        version.version_spec  # noqa: B018  (a version without a readable record cannot clone)
    except SpecError as exc:
        raise CloneNotAllowed(str(exc)) from exc
    estimate = capacity.estimate(version, len(todo), full_copy=full_copy)
    if not estimate.fits:
        raise CapacityRefused(estimate)
    if start is None:
        start = StartMode.WARM if warm.ready_image(version) and not full_copy else StartMode.COLD
    with transaction.atomic():
        made = [
            _create_clone_rows(klass, version, student, by, full_copy, expires_at, inactivity_s)
            for student in todo
        ]
        Clone.objects.filter(pk__in=[c.pk for c in made]).update(start_mode=start)
        for clone in made:
            clone.start_mode = start
        for clone in made:
            jobs.submit(kind_name("provision"), clone, by=by, queue=queue)
    return made


def _create_clone_rows(klass, version, student, by, full_copy, expires_at, inactivity_s) -> Clone:
    from clones.runner import clone_workdir, domain_for

    clone = Clone.objects.create(
        klass=klass,
        student=student,
        version=version,
        full_copy=full_copy,
        created_by=by,
        expires_at=expires_at,
        inactivity_timeout_s=inactivity_s,
    )
    Clone.objects.filter(pk=clone.pk).update(storage_path=str(clone_workdir(clone)))
    record_created(CloneStatusChange, clone, by=by, why=f"launched by {by}")
    spec = version.version_spec
    CloneVM.objects.bulk_create(
        CloneVM(
            clone=clone,
            name=vm.name,
            index=index,
            domain_name=domain_for(clone, vm.name),
            invisible=vm.invisible,
            nics=[record_json(n) for n in vm.nics],
        )
        for index, vm in enumerate(spec.vms)
    )
    return clone


# --- acting on clones ------------------------------------------------------------------
def request_action(
    clone: Clone, action: str, *, user, vm: str | None = None, queue: bool = True
) -> Clone:
    """Move the clone to the action's first status and queue the job that does it.

    Students may start, stop and restart their own clones (not once they expired);
    instructors of the class may do everything. Raises CloneNotAllowed with the reason."""
    if action not in ACTIONS:
        raise CloneNotAllowed(f"unknown action {action!r}")
    teacher = can_teach(user, clone.klass)
    if not teacher:
        if not is_enrolled_student(user, clone) or action not in STUDENT_ACTIONS:
            raise CloneNotAllowed(f"you cannot {action} this clone")
        if action in ("start", "restart") and clone.is_expired:
            raise CloneNotAllowed("this lab has expired; ask your instructor")
        if vm and clone.vms.filter(name=vm, invisible=True).exists():
            raise CloneNotAllowed(f"VM {vm} is not yours to power")
    if vm and not clone.vms.filter(name=vm).exists():
        raise CloneNotAllowed(f"clone {clone.pk} has no VM {vm!r}")
    try:
        # Only from a resting status: a clone a job is working on refuses requests.
        transition(
            clone,
            FIRST_STATUS[action],
            by=user,
            only_from=AT_REST,
            note=f"{action} requested by {user}",
        )
    except InvalidTransition as exc:
        raise CloneNotAllowed(f"cannot {action} now: the clone is {exc.current}") from exc
    jobs.submit(kind_name(action), clone, args={"vm": vm} if vm else {}, by=user, queue=queue)
    return clone


def request_for_class(
    klass: Class, action: str, *, user, queue: bool = True
) -> tuple[list[Clone], list[str]]:
    """`action` for every clone of the class; returns (clones acted on, refusals)."""
    done, refused = [], []
    for clone in klass.clones.select_related("klass"):
        try:
            done.append(request_action(clone, action, user=user, queue=queue))
        except CloneNotAllowed as exc:
            refused.append(f"clone {clone.pk} ({clone.student}): {exc}")
    return done, refused


def set_limits(
    clones: Iterable[Clone], *, expires_at: datetime | None, inactivity_s: int | None
) -> int:
    """Expiry date and inactivity shutdown (None: none) for the clones; returns how many."""
    ids = [c.pk for c in clones]
    return Clone.objects.filter(pk__in=ids).update(
        expires_at=expires_at, inactivity_timeout_s=inactivity_s or None
    )


def note_console_activity(clone_id: int) -> None:
    """Someone typed or clicked in one of the clone's consoles (the console consumer calls
    this, throttled). Postpones the inactivity shutdown. Cheap: one conditional UPDATE that
    writes at most every ACTIVITY_THROTTLE_S seconds per clone."""
    now = timezone.now()
    stale = now - timezone.timedelta(seconds=ACTIVITY_THROTTLE_S)
    Clone.objects.filter(pk=clone_id).filter(
        Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=stale)
    ).update(last_activity_at=now)


# --- reading ---------------------------------------------------------------------------
def clone_summary(clone: Clone, *, for_teacher: bool = True) -> dict:
    """A JSON-ready view of the clone; students see only their visible VMs, no ports."""
    vms = []
    for vm in clone.vms.all():
        if vm.invisible and not for_teacher:
            continue
        item = {
            "name": vm.name,
            "domain": vm.domain_name,
            "state": vm.state,
            "invisible": vm.invisible,
            "console_url": vm.console_url,
            # Readiness (clones.readiness): its guest answered since it was last started.
            "ready": vm.is_ready,
            "ready_s": round(vm.ready_s, 1) if vm.is_ready and vm.ready_s is not None else None,
            "ready_via": vm.ready_via if vm.is_ready else "",
            "ready_text": readiness.ready_text(vm),
            "started_via": vm.started_via,
            "start_note": vm.start_note,
        }
        if for_teacher:
            item["ssh_port"] = vm.mgmt_port or None
        vms.append(item)
    return {
        "id": clone.pk,
        "student": clone.student.get_username(),
        "version": str(clone.version),
        "status": clone.status,
        "start": clone.start_mode,
        "error": clone.error,
        "note": clone.note,
        "busy": clone.is_busy,
        "expires_at": clone.expires_at.isoformat() if clone.expires_at else None,
        "expired": clone.is_expired,
        "inactivity_timeout_s": clone.inactivity_timeout_s,
        "last_activity_at": clone.last_activity_at.isoformat() if clone.last_activity_at else None,
        "vms": vms,
    }


def class_summary(klass: Class) -> dict:
    clones = klass.clones.select_related("student", "version__module").prefetch_related("vms")
    return {
        "class": klass.pk,
        "name": klass.name,
        "clones": [clone_summary(c) for c in clones],
    }
