"""Build pages: start, watch (live), cancel, continue a handbuild, download the log, resume
a failed build, clean up a failed VM kept for inspection."""

from __future__ import annotations

import difflib

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import instructor_required
from builds import consoles, kept, services, version_panels
from builds.models import Build, BuildLogLine, ModuleVersion
from builds.reporting import format_line
from jobs.models import RUNS_SHOWN, Operation
from modules.forms import BriefingForm
from modules.models import Module
from modules.services import ManifestRejected, can_manage

LOG_PAGE = 2000


def _build_for(request: HttpRequest, pk: int) -> Build:
    build = get_object_or_404(Build.objects.select_related("module", "requested_by"), pk=pk)
    if not can_manage(request.user, build.module):
        raise PermissionDenied("This build belongs to another instructor's module.")
    return build


def keep_choice(post) -> int:
    """The build form's "keep the failed VM" choice, in seconds (0: not kept); KeepRefused
    for a time that is not a duration or over the host's cap."""
    if post.get("keep_failed_vm") != "on":
        return 0
    return kept.keep_seconds(post.get("keep_for", ""))


@require_POST
@instructor_required
def start(request: HttpRequest, name: str) -> HttpResponse:
    module = get_object_or_404(Module, name=name)
    if not can_manage(request.user, module):
        raise PermissionDenied("This module belongs to another instructor.")
    try:
        build = services.start_build(
            module=module,
            user=request.user,
            use_cache=request.POST.get("no_cache") != "on",
            keep_failed_vm_s=keep_choice(request.POST),
        )
    except (services.BuildNotAllowed, kept.KeepRefused) as exc:
        messages.error(request, str(exc))
        return redirect(module)
    return redirect(build)


@instructor_required
def resume(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the build form for a resume, with the failed build's manifest to edit. POST:
    resume (with the posted manifest when there is one, else the build's own)."""
    build = _build_for(request, pk)
    if not services.may_resume(request.user, build):
        raise PermissionDenied("Only the instructor who started this build may resume it.")
    text = request.POST.get("manifest") if request.method == "POST" else None
    errors: list = []
    if request.method == "POST":
        try:
            resumed = services.resume_build(
                build, user=request.user, text=text, keep_failed_vm_s=keep_choice(request.POST)
            )
            return redirect(resumed)
        except ManifestRejected as exc:
            errors = exc.result.errors
        except (services.BuildNotAllowed, kept.KeepRefused) as exc:
            messages.error(request, str(exc))
            if text is None:
                return redirect(build)
    context = {
        "build": build,
        "text": build.manifest_text if text is None else text,
        "errors": errors,
        "keep_default": settings.RUDDERVIRT_FAILED_VM_KEEP_S,
    }
    return render(request, "builds/resume.html", context, status=400 if errors else 200)


@require_POST
@instructor_required
def clean_up(request: HttpRequest, pk: int) -> HttpResponse:
    """Clean up now: remove the failed VM the build keeps for inspection."""
    return _act(request, pk, services.clean_up_kept_vm, "The kept VM was removed.")


def _act(request: HttpRequest, pk: int, action, done: str) -> HttpResponse:
    """Run `action(build, user=...)` on the build, say `done` or why it was refused, and go
    back to the build's page."""
    build = _build_for(request, pk)
    try:
        action(build, user=request.user)
        messages.info(request, done)
    except services.BuildNotAllowed as exc:
        messages.error(request, str(exc))
    return redirect(build)


@instructor_required
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    build = _build_for(request, pk)
    vms = build.vms.prefetch_related("steps")
    context = {
        "build": build,
        "vms": vms,
        "resumable": build.status in services.RESUMABLE
        and services.may_resume(request.user, build),
        "kept_vms": [vm for vm in vms if vm.kept] if build.has_kept_vm else [],
        "resumes": build.resumes.order_by("pk"),
        "history": build.history.select_related("by"),
        "runs": Operation.objects.for_target(build).select_related("requested_by")[:RUNS_SHOWN],
    }
    return render(request, "builds/detail.html", context)


@instructor_required
def status(request: HttpRequest, pk: int) -> JsonResponse:
    """The build's state and the log lines after `?after=<seq>` (for the live page)."""
    build = _build_for(request, pk)
    try:
        after = int(request.GET.get("after", "0"))
    except ValueError:
        after = 0
    lines = list(BuildLogLine.objects.filter(build=build, seq__gt=after).order_by("seq")[:LOG_PAGE])
    data = services.build_summary(build, detail=True)
    data["terminal"] = build.is_terminal
    _add_console_fields(data, build)
    data["log"] = [
        {
            "seq": line.seq,
            "vm": line.vm,
            "stream": line.stream,
            "text": line.text,
            "time": line.created_at.isoformat(),
        }
        for line in lines
    ]
    return JsonResponse(data)


def _add_console_fields(data: dict, build: Build) -> None:
    """Per VM its console page while it runs and whether the page shows it live; per waiting
    handbuild step its instructions, deadline and seconds left; and the server's clock, for
    the page's countdown."""
    extras = consoles.page_extras(build)
    data["now"] = extras["now"]
    for vm in data["vms"]:
        vm["console_url"] = extras["console_urls"].get(vm["name"])
        vm["live_console"] = vm["name"] in extras["live_consoles"]
        for index, step in enumerate(vm["steps"]):
            step.update(extras["waits"].get((vm["name"], index), {}))


@instructor_required
def log_download(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    build = _build_for(request, pk)

    def lines():
        for line in (
            BuildLogLine.objects.filter(build=build).order_by("seq").iterator(chunk_size=2000)
        ):
            yield format_line(line.created_at, line.vm, line.stream, line.text) + "\n"

    response = StreamingHttpResponse(lines(), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="build-{build.pk}.log"'
    return response


@require_POST
@instructor_required
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    done = "Cancel requested: the build stops within a few seconds."
    return _act(request, pk, services.request_cancel, done)


@require_POST
@instructor_required
def decide(request: HttpRequest, pk: int, decision: str) -> HttpResponse:
    build = _build_for(request, pk)
    if decision not in {"continue", "fail"}:
        raise PermissionDenied("unknown decision")
    try:
        services.decide_handbuild(
            build,
            vm_name=request.POST.get("vm") or None,
            user=request.user,
            decision=decision,
            reason=request.POST.get("reason", ""),
        )
    except services.BuildNotAllowed as exc:
        messages.error(request, str(exc))
    return redirect(build)


@instructor_required
def version_diff(request: HttpRequest, name: str, number: int) -> HttpResponse:
    version = _managed_version(request, name, number)
    module = version.module
    previous = (
        ModuleVersion.objects.filter(module=module, number__lt=number).order_by("-number").first()
    )
    diff = manifest_diff(previous, version)
    return render(
        request,
        "builds/version_diff.html",
        {
            "module": module,
            "version": version,
            "previous": previous,
            "diff": diff,
            "panels": version_panels.render_all(request, version),
        },
    )


def manifest_diff(previous: ModuleVersion | None, version: ModuleVersion) -> list[tuple[str, str]]:
    """(css class, line) pairs of a unified diff of the two versions' manifests."""
    old = previous.manifest_text if previous else ""
    label = f"v{previous.number}" if previous else "(nothing)"
    lines = difflib.unified_diff(
        old.splitlines(),
        version.manifest_text.splitlines(),
        fromfile=label,
        tofile=f"v{version.number}",
        lineterm="",
    )
    kinds = {"+": "add", "-": "del", "@": "hunk"}
    return [(kinds.get(line[:1], "ctx"), line) for line in lines]


@instructor_required
def version_briefing(request: HttpRequest, name: str, number: int) -> HttpResponse:
    """One version's briefing (a copy of the module's when it was built), edited for it."""
    version = _managed_version(request, name, number)
    module = version.module
    form = BriefingForm(request.POST or None, initial={"briefing": version.briefing})
    if request.method == "POST" and form.is_valid():
        version.briefing = form.cleaned_data["briefing"]
        version.save(update_fields=["briefing"])
        messages.success(request, f"Briefing of {version} saved.")
        return redirect(module)
    context = {"form": form, "module": module, "version": version}
    return render(request, "modules/briefing.html", context, status=400 if form.errors else 200)


def _managed_version(request: HttpRequest, name: str, number: int) -> ModuleVersion:
    module = get_object_or_404(Module, name=name)
    if not can_manage(request.user, module):
        raise PermissionDenied("This module belongs to another instructor.")
    return get_object_or_404(
        ModuleVersion.objects.select_related("module"), module=module, number=number
    )
