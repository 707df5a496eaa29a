"""A student's lab page (briefing, time left, console, "Check my work") and the grading
pages of instructors (run the checks, the gradebook as CSV)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.roles import instructor_required
from clones import grading, services
from clones.models import Class, Clone
from modules.briefing import render as render_briefing


def _class_for(request: HttpRequest, pk: int) -> Class:
    klass = get_object_or_404(Class.objects.select_related("owner"), pk=pk)
    if not services.can_teach(request.user, klass):
        raise PermissionDenied("This class belongs to another instructor.")
    return klass


def _clone(pk: int) -> Clone:
    related = ("klass", "student", "version__module")
    return get_object_or_404(Clone.objects.select_related(*related), pk=pk)


def _own_clone(request: HttpRequest, pk: int) -> Clone:
    """The clone, for its student or whoever teaches its class."""
    clone = _clone(pk)
    if not services.can_use(request.user, clone):
        raise PermissionDenied("This lab belongs to someone else.")
    return clone


# --- students (and their instructors) ------------------------------------------------------
@login_required
def lab(request: HttpRequest, pk: int) -> HttpResponse:
    clone = _own_clone(request, pk)
    summary = services.clone_summary(clone, for_teacher=False)
    context = {
        "clone": clone,
        "c": summary,
        "briefing": render_briefing(clone.version.briefing),
        "can_check": grading.may_check_own_work(request.user, clone),
        "checks": grading.student_view(request.user, clone),
    }
    return render(request, "clones/lab.html", context)


@require_POST
@login_required
def check_my_work(request: HttpRequest, pk: int) -> HttpResponse:
    clone = _own_clone(request, pk)
    if not grading.may_check_own_work(request.user, clone):
        raise PermissionDenied("Your instructor has not let students run the checks.")
    grading.request_grading([clone], by=request.user, by_student=True)
    if "application/json" in request.headers.get("Accept", ""):
        return JsonResponse(grading.student_view(request.user, clone), status=202)
    messages.info(request, "Checking your work: the results appear below in a moment.")
    return redirect(reverse("clones:lab", args=[clone.pk]) + "#checks")


@login_required
def checks_status(request: HttpRequest, pk: int) -> JsonResponse:
    clone = _own_clone(request, pk)
    return JsonResponse(grading.student_view(request.user, clone))


# --- instructors -------------------------------------------------------------------------
@require_POST
@instructor_required
def class_grade(request: HttpRequest, pk: int) -> HttpResponse:
    klass = _class_for(request, pk)
    return _grade(request, klass, klass.clones.select_related("version__module"))


@require_POST
@instructor_required
def clone_grade(request: HttpRequest, pk: int) -> HttpResponse:
    clone = _clone(pk)
    if not services.can_teach(request.user, clone.klass):
        raise PermissionDenied("This class belongs to another instructor.")
    return _grade(request, clone.klass, [clone])


def _grade(request: HttpRequest, klass: Class, clones) -> HttpResponse:
    try:
        runs = grading.request_grading(clones, by=request.user)
    except grading.GradingRefused as exc:
        messages.error(request, f"Checks not run: {exc}.")
    else:
        messages.info(request, f"Running the checks in {len(runs)} clone(s).")
    return redirect(klass.get_absolute_url() + "#gradebook")


@instructor_required
def gradebook_csv(request: HttpRequest, pk: int) -> HttpResponse:
    klass = _class_for(request, pk)
    text = grading.gradebook_csv(grading.gradebook(klass))
    response = HttpResponse(text, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="gradebook-class-{klass.pk}.csv"'
    return response
