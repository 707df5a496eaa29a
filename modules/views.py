"""Module pages: list, create, edit the manifest, validate it."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.roles import instructor_required
from modules.forms import MAX_MANIFEST_BYTES, BriefingForm, ManifestForm, ModuleForm, RubricForm
from modules.models import Module
from modules.rubrics import RubricRejected, save_rubric, validate_rubric
from modules.services import (
    ManifestRejected,
    ModuleNameTaken,
    can_manage,
    create_module,
    modules_visible_to,
    save_manifest,
    validate_for,
)
from ruddervirt import rubric as rubrics
from ruddervirt.manifest import ValidationResult


def result_json(result: ValidationResult | rubrics.RubricResult) -> dict:
    return {
        "valid": result.valid,
        "errors": [p.to_dict() for p in result.errors],
        "warnings": [p.to_dict() for p in result.warnings],
    }


@instructor_required
def module_list(request: HttpRequest) -> HttpResponse:
    return render(request, "modules/list.html", {"modules": modules_visible_to(request.user)})


def _managed_module(request: HttpRequest, name: str) -> Module:
    module = get_object_or_404(Module, name=name)
    if not can_manage(request.user, module):
        raise PermissionDenied("This module belongs to another instructor.")
    return module


@instructor_required
def module_new(request: HttpRequest) -> HttpResponse:
    form = ModuleForm(request.POST or None)
    problems = None
    if request.method == "POST" and form.is_valid():
        try:
            outcome = create_module(
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                text=form.cleaned_data["manifest"],
                user=request.user,
            )
        except ManifestRejected as exc:
            problems = result_json(exc.result)
        except ModuleNameTaken:
            form.add_error("name", "A module with this name exists already.")
        else:
            messages.success(request, f"Module {outcome.module.name} saved.")
            return redirect(outcome.module)
    return render(
        request,
        "modules/edit.html",
        {"form": form, "problems": problems, "module": None},
        status=400 if request.method == "POST" else 200,
    )


@instructor_required
def module_detail(request: HttpRequest, name: str) -> HttpResponse:
    """The module page; its versions, builds and topology come from builds' template tags."""
    module = _managed_module(request, name)
    revisions = module.revisions.select_related("created_by")
    context = {"module": module, "revisions": revisions, "latest": revisions.first()}
    return render(request, "modules/detail.html", context)


@instructor_required
def module_edit(request: HttpRequest, name: str) -> HttpResponse:
    module = _managed_module(request, name)
    latest = module.latest_revision
    form = ManifestForm(request.POST or None, initial={"manifest": latest.text if latest else ""})
    problems = None
    if request.method == "POST" and form.is_valid():
        try:
            outcome = save_manifest(
                module=module, text=form.cleaned_data["manifest"], user=request.user
            )
        except ManifestRejected as exc:
            problems = result_json(exc.result)
        else:
            if outcome.created_revision:
                messages.success(request, f"Saved as revision {outcome.revision.number}.")
            else:
                messages.info(
                    request, "No change: the manifest is the same as the newest revision."
                )
            return redirect(module)
    return render(
        request,
        "modules/edit.html",
        {"form": form, "problems": problems, "module": module},
        status=400 if request.method == "POST" else 200,
    )


@instructor_required
def revision_text(request: HttpRequest, name: str, number: int) -> HttpResponse:
    module = _managed_module(request, name)
    revision = get_object_or_404(module.revisions, number=number)
    return _yaml_text(revision.text, f"{module.name}-r{number}.yaml")


def _yaml_text(text: str, filename: str) -> HttpResponse:
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="{filename}"'
    return response


@require_POST
@instructor_required
def validate_view(request: HttpRequest) -> JsonResponse:
    """Validate the posted `manifest` form field; the answer is the validator's JSON."""
    text = request.POST.get("manifest", "").replace("\r\n", "\n")
    if len(text.encode("utf-8")) > MAX_MANIFEST_BYTES:
        problem = {
            "path": "",
            "line": None,
            "column": None,
            "message": "A manifest may be at most 1 MiB.",
        }
        return JsonResponse({"valid": False, "errors": [problem], "warnings": []}, status=413)
    return JsonResponse(result_json(validate_for(text, user=request.user)))


# --- teaching: the rubric and the briefing --------------------------------------------------
@instructor_required
def rubric_edit(request: HttpRequest, name: str) -> HttpResponse:
    """The module's rubric (ruddervirt.rubric) in the manifest editor, and its history."""
    module = _managed_module(request, name)
    current = module.rubric
    form = RubricForm(request.POST or None, initial={"rubric": current.text if current else ""})
    problems = None
    if request.method == "POST" and form.is_valid():
        try:
            saved = save_rubric(module=module, text=form.cleaned_data["rubric"], user=request.user)
        except RubricRejected as exc:
            problems = result_json(exc.result)
        else:
            if saved.created:
                messages.success(request, f"Rubric saved as revision {saved.revision.number}.")
            else:
                messages.info(request, "No change: the rubric is the same as the newest revision.")
            return redirect("modules:rubric", module.name)
    context = {
        "form": form,
        "problems": problems,
        "module": module,
        "revisions": module.rubric_revisions.select_related("created_by"),
    }
    status = 400 if request.method == "POST" else 200
    return render(request, "modules/rubric.html", context, status=status)


@require_POST
@instructor_required
def rubric_validate(request: HttpRequest, name: str) -> JsonResponse:
    module = _managed_module(request, name)
    text = request.POST.get("rubric", "").replace("\r\n", "\n")
    return JsonResponse(result_json(validate_rubric(module, text)))


@instructor_required
def rubric_text(request: HttpRequest, name: str, number: int) -> HttpResponse:
    module = _managed_module(request, name)
    revision = get_object_or_404(module.rubric_revisions, number=number)
    return _yaml_text(revision.text, f"{module.name}-rubric-r{number}.yaml")


@instructor_required
def briefing_edit(request: HttpRequest, name: str) -> HttpResponse:
    """The module's briefing: the Markdown each version built from now on starts with."""
    module = _managed_module(request, name)
    form = BriefingForm(request.POST or None, initial={"briefing": module.briefing})
    if request.method == "POST" and form.is_valid():
        module.briefing = form.cleaned_data["briefing"]
        module.save(update_fields=["briefing", "updated_at"])
        messages.success(request, "Briefing saved: versions built from now on start with it.")
        return redirect(module)
    context = {"form": form, "module": module, "version": None}
    return render(request, "modules/briefing.html", context, status=400 if form.errors else 200)
