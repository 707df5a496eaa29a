"""Builds: where the ORM meets the engine.

Views and management commands call these functions; the RQ job calls execute_build.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import traceback
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from builds import admission, refs
from builds.models import (
    Build,
    BuildStatus,
    BuildStatusChange,
    BuildStep,
    BuildVM,
    ModuleVersion,
    StepStatus,
    TemplateVM,
    VMPhase,
)
from builds.reporting import DBReporter
from builds.transitions import InvalidTransition, transition
from modules.lifecycle import record_created
from modules.limits import manifest_limits
from modules.models import ManifestRevision, Module
from modules.services import ModuleNameTaken, can_manage, create_module, save_manifest
from ruddervirt.engine.build import BuildPlan, BuildResult, run_build
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.engine.templates import define_templates, remove_templates
from ruddervirt.fetch_settings import portal_fetch_policy
from ruddervirt.manifest import NO_LIMITS, Manifest, ManifestInvalid, parse
from ruddervirt.spec import SpecError, disk_files

log = logging.getLogger(__name__)


class BuildNotAllowed(Exception):
    """The request makes no sense for this build now (e.g. cancel a finished build)."""


# --- configuration ---------------------------------------------------------------------
def engine_config() -> EngineConfig:
    return EngineConfig(
        storage_root=Path(settings.RUDDERVIRT_STORAGE_ROOT),
        domain_type=settings.RUDDERVIRT_DOMAIN_TYPE,
        name_prefix=settings.RUDDERVIRT_NAME_PREFIX,
        allow_internet=settings.RUDDERVIRT_ALLOW_INTERNET,
        boot_key_interval_s=settings.RUDDERVIRT_BOOT_KEY_INTERVAL_MS / 1000,
        boot_key_hold_ms=settings.RUDDERVIRT_BOOT_KEY_HOLD_MS,
        fetch_policy=portal_fetch_policy(),
    )


_hypervisor = None


def get_hypervisor():
    """The process-wide libvirt connection (imported lazily: views need no libvirt)."""
    global _hypervisor
    if _hypervisor is None:
        import atexit

        from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor

        _hypervisor = LibvirtHypervisor(
            settings.RUDDERVIRT_LIBVIRT_URI, name_prefix=settings.RUDDERVIRT_NAME_PREFIX
        )
        # Close while the interpreter is intact (libvirt's __del__ fails at shutdown).
        atexit.register(_hypervisor.close)
    return _hypervisor


# --- submitting ------------------------------------------------------------------------
def _create_rows(build: Build, manifest: Manifest) -> None:
    """One BuildVM per manifest VM, one BuildStep per provisioner, all Pending."""
    BuildVM.objects.filter(build=build).delete()
    for index, vm in enumerate(manifest.vms):
        row = BuildVM.objects.create(build=build, name=vm.name, index=index)
        BuildStep.objects.bulk_create(
            BuildStep(vm=row, index=i, name=step.name or f"{step.type} {i + 1}", type=step.type)
            for i, step in enumerate(vm.provisioners)
        )


def start_build(
    *, module: Module, user, revision: ManifestRevision | None = None, queue: bool = True
) -> Build:
    """Create a build of `revision` (default: the module's newest manifest) and queue it
    for the workers once the transaction commits. With queue=False the caller runs it
    (`manage.py build --wait` on a host without workers). BuildNotAllowed, with the path
    and line, when a buildRef names a module version `user` may not use (builds.refs),
    when the text is over this host's caps, and when the build may not start now
    (builds.admission: the user's concurrent builds, the host's memory and disk)."""
    revision = revision or module.latest_revision
    if revision is None:
        raise BuildNotAllowed(f"module {module.name} has no manifest yet")
    try:
        manifest = parse(revision.text, limits=manifest_limits())
    except ManifestInvalid as exc:
        raise BuildNotAllowed(f"{revision} is not valid on this host: {exc.problems[0]}") from None
    refused = refs.refused_refs(manifest, user, revision.text)
    if refused:
        raise BuildNotAllowed("; ".join(str(p) for p in refused))
    with transaction.atomic():
        reason = admission.refusal(manifest, user=user)
        if reason:
            raise BuildNotAllowed(reason)
        build = Build.objects.create(
            module=module,
            revision=revision,
            manifest_text=revision.text,
            manifest_sha256=revision.sha256,
            requested_by=user,
        )
        _create_rows(build, manifest)
        record_created(BuildStatusChange, build, by=user, why=f"requested by {user}")
        if queue:
            transaction.on_commit(lambda: enqueue(build.pk))
    return build


def submit_manifest(*, text: str, module_name: str, user, queue: bool = True) -> Build:
    """Save `text` as the module's newest manifest (creating the module) and build it.
    Another instructor's module is refused as a name that is taken (ModuleNameTaken)."""
    module = Module.objects.filter(name=module_name).first()
    if module is not None and not can_manage(user, module):
        raise ModuleNameTaken(module_name)
    if module is None:
        outcome = create_module(name=module_name, description="", text=text, user=user)
    else:
        outcome = save_manifest(module=module, text=text, user=user)
    return start_build(module=outcome.module, user=user, revision=outcome.revision, queue=queue)


def enqueue(build_id: int) -> None:
    import django_rq

    from builds.jobs import QUEUE, job_timeout_for, run_build_job

    build = Build.objects.get(pk=build_id)
    job = django_rq.get_queue(QUEUE).enqueue(
        run_build_job, build_id, job_timeout=job_timeout_for(build)
    )
    Build.objects.filter(pk=build_id).update(job_id=job.id)


def request_cancel(build: Build, *, user) -> Build:
    """Ask the worker to stop. A build nobody has started yet is cancelled at once."""
    if build.is_terminal:
        raise BuildNotAllowed(f"build {build.pk} has already finished ({build.status})")
    Build.objects.filter(pk=build.pk).update(cancel_requested=True)
    build.refresh_from_db()
    if build.status == BuildStatus.PENDING and build.attempt == 1 and not build.started_at:
        # The worker may have picked it up meanwhile; it will see cancel_requested.
        with contextlib.suppress(InvalidTransition):
            transition(
                build,
                BuildStatus.CANCELLED,
                by=user,
                error=f"cancelled by {user} before it started",
            )
    append_log(build, f"cancel requested by {user}")
    return build


def decide_handbuild(
    build: Build, *, vm_name: str | None, user, decision: str, reason: str = ""
) -> BuildStep:
    """Continue (or fail) the handbuild step a VM of `build` is waiting at."""
    if decision not in {"continue", "fail"}:
        raise ValueError(decision)
    waiting = BuildStep.objects.filter(vm__build=build, status=StepStatus.WAITING_FOR_USER)
    if vm_name:
        waiting = waiting.filter(vm__name=vm_name)
    steps = list(waiting.select_related("vm"))
    if not steps:
        raise BuildNotAllowed("no VM of this build is waiting for a person")
    if len(steps) > 1:
        names = ", ".join(s.vm.name for s in steps)
        raise BuildNotAllowed(f"several VMs are waiting ({names}): say which")
    step = steps[0]
    text = reason.strip() or ("" if decision == "continue" else f"failed by {user}")
    BuildStep.objects.filter(pk=step.pk, user_decision="").update(
        user_decision=decision, user_reason=text
    )
    append_log(build, f"{decision} pressed by {user}{': ' + text if text else ''}", vm=step.vm.name)
    return step


def append_log(build: Build, text: str, *, vm: str = "") -> None:
    """Append one line to a build's log from outside the worker."""
    from builds.models import BuildLogLine

    with transaction.atomic():
        seq = (BuildLogLine.objects.filter(build=build).aggregate(m=Max("seq"))["m"] or 0) + 1
        BuildLogLine.objects.create(
            build=build, seq=seq, created_at=timezone.now(), vm=vm, stream="info", text=text
        )


# --- running ---------------------------------------------------------------------------
def worker_identity() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def build_workdir(build_id: int) -> Path:
    return engine_config().storage_root / "builds" / str(build_id)


def resolve_parents(manifest: Manifest, *, user) -> dict[str, list[Path]]:
    """For each VM whose source is a buildRef: the disk paths of the referenced template VM.

    Fails at once, before anything boots, when a reference is not a succeeded build of a
    module `user` (who asked for the build) may use now (builds.refs: the uniform refusal
    for other instructors' modules, the precise reason for the user's own)."""
    parents: dict[str, list[Path]] = {}
    for vm in manifest.vms:
        if vm.source.build_ref is None:
            continue
        try:
            template = refs.template_for(user, vm)
        except refs.RefRefused as exc:
            raise BuildError(f"VM {vm.name}: buildRef {exc}") from None
        try:
            recorded = template.version.version_spec.vm(template.name)
        except (SpecError, KeyError) as exc:
            raise BuildError(f"VM {vm.name}: buildRef {template.version}: {exc}") from exc
        parents[vm.name] = list(disk_files(recorded, engine_config().storage_root))
    return parents


def execute_build(build_id: int, *, hypervisor=None, echo=None) -> Build:
    """Run a queued build to its end (the RQ job's body). Retries per the manifest."""
    build = Build.objects.get(pk=build_id)
    if build.is_terminal:
        return build
    # Claim the build, so a worker that starts late never runs one a `--wait` command runs.
    owner = worker_identity()
    if not Build.objects.filter(pk=build_id, worker="").update(
        worker=owner, heartbeat_at=timezone.now()
    ):
        log.warning("build %s is already being run by %s", build_id, build.worker)
        return build
    hv = hypervisor or get_hypervisor()
    config = engine_config()
    base = parse(build.manifest_text, limits=NO_LIMITS)  # accepted when submitted
    attempts = base.retries + 1
    while True:
        reporter = DBReporter(build, echo=echo)
        outcome = _run_attempt(build, base, hv, config, reporter)
        reporter.close()
        build.refresh_from_db()
        if outcome is None or build.is_terminal:
            return build
        if build.attempt < attempts and not build.cancel_requested:
            append_log(
                build,
                f"attempt {build.attempt} failed: {outcome}; retrying "
                f"(attempt {build.attempt + 1} of {attempts})",
            )
            transition(build, BuildStatus.PENDING, why=f"retry after: {outcome}")
            _create_rows(build, base)
            continue
        _fail(build, outcome)
        build.refresh_from_db()
        return build


def _run_attempt(
    build: Build, base: Manifest, hv, config: EngineConfig, reporter: DBReporter
) -> str | None:
    """One try. Returns None when the build reached a terminal state, else the error."""
    workdir = build_workdir(build.pk)
    try:
        reporter.log(
            f"build {build.pk} of module {build.module.name}, attempt {build.attempt}, "
            f"manifest sha256:{build.manifest_sha256}"
        )
        parents = resolve_parents(base, user=build.requested_by)
        plan = BuildPlan(
            key=f"b{build.pk}",
            manifest=base,
            parents=parents,
            workdir=workdir,
        )
        result = run_build(plan, BuildContext(config=config, hv=hv, reporter=reporter))
        reporter.flush()
        _succeed(build, base, result, hv, config, reporter)
        return None
    except BuildCancelled as exc:
        reporter.log(f"build stopped: {exc}", stream="error")
        reporter.flush()
        _cancel(build, str(exc))
        return None
    except BuildError as exc:
        reporter.log(f"build failed: {exc}", stream="error")
        return str(exc)
    except Exception as exc:
        log.exception("build %s crashed", build.pk)
        reporter.log("internal error:\n" + traceback.format_exc(), stream="error")
        return f"internal error: {exc.__class__.__name__}: {exc}"


def mark_interrupted(build: Build) -> None:
    """The process running the build in the foreground was interrupted (Ctrl-C)."""
    if not build.is_terminal:
        _cancel(build, "interrupted")


def _fail(build: Build, reason: str) -> None:
    keep = settings.RUDDERVIRT_FAILED_BUILD_KEEP_S
    try:
        transition(build, BuildStatus.FAILED, error=reason)
    except InvalidTransition:
        build.refresh_from_db()
        return
    Build.objects.filter(pk=build.pk).update(
        keep_disks_until=timezone.now() + timedelta(seconds=keep)
    )
    BuildVM.objects.filter(build=build).exclude(phase__in=[VMPhase.SUCCEEDED]).update(
        phase=VMPhase.FAILED, finished_at=timezone.now()
    )


def _cancel(build: Build, reason: str) -> None:
    build.refresh_from_db()
    target = BuildStatus.CANCELLED if build.cancel_requested else BuildStatus.FAILED
    try:
        why = f"cancel requested: {reason}" if target == BuildStatus.CANCELLED else reason
        transition(build, target, error=reason, why=why)
    except InvalidTransition:
        return
    if target == BuildStatus.FAILED:  # a timeout, not a person: keep disks for inspection
        Build.objects.filter(pk=build.pk).update(
            keep_disks_until=timezone.now()
            + timedelta(seconds=settings.RUDDERVIRT_FAILED_BUILD_KEEP_S)
        )
    else:
        remove_build_disks(build)
    BuildVM.objects.filter(build=build).exclude(phase=VMPhase.SUCCEEDED).update(
        phase=VMPhase.FAILED, message=reason
    )


def _succeed(
    build: Build, base: Manifest, result: BuildResult, hv, config: EngineConfig, reporter
) -> None:
    """Turn captured disks into the module's next immutable version."""
    build.refresh_from_db()  # the reporter moved its status along meanwhile
    module = build.module
    with transaction.atomic():
        Module.objects.select_for_update().filter(pk=module.pk).first()
        number = (
            ModuleVersion.objects.filter(module=module).aggregate(m=Max("number"))["m"] or 0
        ) + 1
        dest = config.storage_root / "modules" / module.name / f"v{number}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result.capture_dir), dest)
        spec = result.spec.rebased(dest.relative_to(config.storage_root).as_posix())
        domains = define_templates(
            hv, config, key=f"m{module.pk}v{number}", label=f"{module.name}@{number}", spec=spec
        )
        try:
            version = ModuleVersion.objects.create(
                module=module,
                number=number,
                build=build,
                manifest_text=build.manifest_text,
                manifest_sha256=build.manifest_sha256,
                storage_path=str(dest),
                spec=spec.to_json(),
            )
            for index, (vm, domain) in enumerate(zip(spec.vms, domains, strict=True)):
                TemplateVM.objects.create(
                    version=version, name=vm.name, index=index, domain_name=domain
                )
            transition(build, BuildStatus.SUCCEEDED, why=f"version {version} captured")
        except Exception:
            remove_templates(hv, domains)
            shutil.rmtree(dest, ignore_errors=True)
            raise
    BuildVM.objects.filter(build=build).update(phase=VMPhase.SUCCEEDED, finished_at=timezone.now())
    reporter.log(f"module {module.name} version {number} is ready ({len(domains)} template VM(s))")
    remove_build_disks(build)


def remove_build_disks(build: Build) -> None:
    shutil.rmtree(build_workdir(build.pk), ignore_errors=True)
    Build.objects.filter(pk=build.pk).update(disks_removed=True, keep_disks_until=None)


# --- reading ---------------------------------------------------------------------------
def build_summary(build: Build, *, detail: bool = False) -> dict:
    version = ModuleVersion.objects.filter(build=build).values_list("number", flat=True).first()
    data = {
        "build": build.pk,
        "status": build.status,
        "module": build.module.name,
        "version": version,
        "duration_s": build.duration_s,
    }
    if build.error:
        data["error"] = build.error
    if detail:
        data["attempt"] = build.attempt
        data["vms"] = [
            {
                "name": vm.name,
                "phase": vm.phase,
                "message": vm.message,
                "steps": [
                    {
                        "name": s.name,
                        "type": s.type,
                        "status": s.status,
                        "exit_code": s.exit_code,
                        "duration_s": s.duration_s,
                        "message": s.message,
                    }
                    for s in vm.steps.all()
                ],
            }
            for vm in build.vms.prefetch_related("steps")
        ]
    return data
