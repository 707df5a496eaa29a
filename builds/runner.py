"""Running a build: the body of the build job, where the ORM meets the engine.

`build_job` is the body of the job of kind "build": jobs.runner claims the build's operation
in an RQ worker or, through `execute_build(build_id)`, in this process (`manage.py build
--wait` on a host without workers, and tests). It runs each attempt
through the engine, and turns a success into the module's next version; a failure or a
cancel moves the build to its terminal status. builds.services decides and queues; this
module does.
"""

from __future__ import annotations

import logging
import shutil
import traceback
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

import jobs.runner as jobs
from builds import kept, refs
from builds.models import (
    Build,
    BuildStatus,
    BuildStep,
    BuildVM,
    ModuleVersion,
    TemplateVM,
    VMPhase,
)
from builds.reporting import DBReporter, append_log
from builds.transitions import InvalidTransition, transition
from jobs.models import Operation
from jobs.registry import Result
from modules.models import Module
from ruddervirt.engine.build import BuildPlan, BuildResult, run_build
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.engine.stepcache import StepCache
from ruddervirt.engine.templates import define_templates, remove_templates, version_key
from ruddervirt.hypervisor.driver import HypervisorError
from ruddervirt.manifest import NO_LIMITS, Manifest, parse
from ruddervirt.runtime import engine_config, get_hypervisor
from ruddervirt.spec import SpecError, disk_files, dump_spec

log = logging.getLogger(__name__)
KIND = "build"  # the job kind (jobs.registry) that runs a build


# --- the rows and the log a build keeps ------------------------------------------------
def create_rows(build: Build, manifest: Manifest) -> None:
    """One BuildVM per manifest VM, one BuildStep per provisioner, all Pending."""
    BuildVM.objects.filter(build=build).delete()
    for index, vm in enumerate(manifest.vms):
        row = BuildVM.objects.create(build=build, name=vm.name, index=index)
        BuildStep.objects.bulk_create(
            BuildStep(
                vm=row,
                index=i,
                name=step.name or f"{step.type} {i + 1}",
                type=step.type,
                instructions=getattr(step, "instructions", ""),
                timeout_s=step.step_timeout,
            )
            for i, step in enumerate(vm.provisioners)
        )


# --- running ---------------------------------------------------------------------------
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
    """Run a queued build to its end in this process (`manage.py build --wait`, tests),
    through the one runner: its queued operation is claimed, so a worker that starts late
    never runs it too. A build made without one (by hand) gets one."""
    build = Build.objects.get(pk=build_id)
    if not build.is_terminal:
        op = jobs.open_run(KIND, build, by=build.requested_by)
        if op is not None:
            jobs.run(op.pk, hv=hypervisor, echo=echo)
        else:
            log.warning("build %s is already being run", build_id)
    build.refresh_from_db()
    return build


def build_job(op: Operation, build: Build, *, hv=None, echo=None) -> Result:
    """The job of kind "build" (jobs.runner calls it with the claimed operation): every
    attempt the build asks for, then the build's end. Returns the build's final status."""
    if build.is_terminal:
        return Result(outcome=build.status, skipped=True)
    hv = hv or get_hypervisor()
    config = engine_config()
    base = parse(build.manifest_text, limits=NO_LIMITS)  # accepted when submitted
    attempts = build.retries + 1  # as submitted (Build.retries)
    while True:
        reporter = DBReporter(build, echo=echo)
        # Only the last attempt keeps a failed VM (a retry reuses the VMs' names).
        keep = build.keep_failed_vm_s > 0 and build.attempt >= attempts
        outcome = _run_attempt(build, base, hv, config, reporter, keep_failed_vm=keep)
        reporter.close()
        build.refresh_from_db()
        if outcome is None or build.is_terminal:
            return _result(build)
        if build.attempt < attempts and not build.cancel_requested:
            append_log(
                build,
                f"attempt {build.attempt} failed: {outcome}; retrying "
                f"(attempt {build.attempt + 1} of {attempts})",
            )
            transition(build, BuildStatus.PENDING, why=f"retry after: {outcome}")
            create_rows(build, base)
            continue
        _fail(build, outcome)
        if keep:
            _settle_kept(build, hv, base)
        build.refresh_from_db()
        return _result(build)


def _settle_kept(build: Build, hv, base: Manifest) -> None:
    """Record the VM the failed build kept (builds.kept). When the hypervisor cannot say, the
    build keeps nothing on record and the next reconcile removes the VM as a leftover."""
    try:
        kept.settle(build, hv, base)
    except HypervisorError as exc:
        append_log(build, f"could not record the kept VM ({exc}): it is removed as a leftover")


def _result(build: Build) -> Result:
    """A build that did not succeed (failed, cancelled) is a run that failed, with its reason."""
    error = "" if build.status == BuildStatus.SUCCEEDED else build.error or build.status
    return Result(outcome=build.status, error=error)


def interrupted(build: Build, reason: str) -> str | None:
    """A build whose worker died: failed with the reason, its disks removed on the next
    reconcile (jobs.reconcile calls this)."""
    try:
        transition(build, BuildStatus.FAILED, error=reason)
    except InvalidTransition:
        return None
    append_log(build, f"build failed: {reason}; cleaning up")
    Build.objects.filter(pk=build.pk).update(keep_disks_until=timezone.now())
    return f"build {build.pk}: marked failed ({reason.removeprefix('interrupted: ')})"


def _run_attempt(
    build: Build,
    base: Manifest,
    hv,
    config: EngineConfig,
    reporter: DBReporter,
    *,
    keep_failed_vm: bool = False,
) -> str | None:
    """One try. Returns None when the build reached a terminal state, else the error."""
    workdir = build_workdir(build.pk)
    try:
        reporter.log(
            f"build {build.pk} of module {build.module.name}, attempt {build.attempt}, "
            f"manifest sha256:{build.manifest_sha256}"
        )
        if build.resumed_from_id is not None:
            reporter.log(
                f"resuming build #{build.resumed_from_id}: each VM starts from the last "
                "checkpoint of its good steps that still matches the manifest"
            )
        parents = resolve_parents(base, user=build.requested_by)
        plan = BuildPlan(
            key=f"b{build.pk}",
            manifest=base,
            parents=parents,
            workdir=workdir,
            use_cache=build.use_cache,
            build_id=build.pk,
            cache_scope=build.cache_scope,
            keep_failed_vm=keep_failed_vm,
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
            hv,
            config,
            key=version_key(module.pk, number),
            label=f"{module.name}@{number}",
            spec=spec,
        )
        try:
            version = ModuleVersion.objects.create(
                module=module,
                number=number,
                build=build,
                manifest_text=build.manifest_text,
                manifest_sha256=build.manifest_sha256,
                storage_path=str(dest),
                spec=dump_spec(spec),
                briefing=Module.objects.get(pk=module.pk).briefing,
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
    """Remove the build's folder, and the step-cache layers only it held (its working
    disks; the checkpoints it kept stay in the cache)."""
    shutil.rmtree(build_workdir(build.pk), ignore_errors=True)
    store = StepCache(engine_config().step_cache_dir)
    store.release(f"b{build.pk}")
    try:
        store.collect()
    except OSError as exc:
        log.warning("build %s: could not clean the step cache: %s", build.pk, exc)
    Build.objects.filter(pk=build.pk).update(disks_removed=True, keep_disks_until=None)
