"""Class pages for instructors, My labs and power buttons for students, invitations."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login, update_session_auth_hash
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import PasswordChangeForm, SetPasswordForm
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.roles import instructor_required
from builds.models import ModuleVersion
from clones import grading, services, students, warm
from clones.forms import ClassForm, LaunchForm, LimitsForm, StudentsForm
from clones.models import Class, Clone, WarmImage
from jobs.models import RUNS_SHOWN, Operation

POWER = {"on": "start", "off": "stop", "restart": "restart"}


def _class_for(request: HttpRequest, pk: int) -> Class:
    klass = get_object_or_404(Class.objects.select_related("owner"), pk=pk)
    if not services.can_teach(request.user, klass):
        raise PermissionDenied("This class belongs to another instructor.")
    return klass


def _clone_for(request: HttpRequest, pk: int, *, teacher: bool) -> Clone:
    clone = get_object_or_404(Clone.objects.select_related("klass", "student", "version"), pk=pk)
    allowed = services.can_teach if teacher else services.can_use
    if not allowed(request.user, clone.klass if teacher else clone):
        raise PermissionDenied("This lab belongs to someone else.")
    return clone


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _errors(form) -> str:
    return "; ".join(e for errors in form.errors.values() for e in errors)


def _back(request: HttpRequest, default: str) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return redirect(target)
    return redirect(default)


# --- instructors -----------------------------------------------------------------------
@instructor_required
def class_list(request: HttpRequest) -> HttpResponse:
    form = ClassForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        klass = services.create_class(name=form.cleaned_data["name"], owner=request.user)
        messages.success(request, f"Class {klass.name} created: add students next.")
        return redirect(klass)
    classes = services.classes_visible_to(request.user).prefetch_related("clones", "students")
    return render(request, "clones/class_list.html", {"classes": classes, "form": form})


@instructor_required
def class_detail(request: HttpRequest, pk: int) -> HttpResponse:
    klass = _class_for(request, pk)
    context = {
        "klass": klass,
        "summary": services.class_summary(klass),
        "members": klass.memberships.select_related("student"),
        "launch_form": LaunchForm(versions=services.versions_for(request.user)),
        "students_form": StudentsForm(),
        "limits_form": LimitsForm(),
        "gradebook": grading.gradebook(klass),
    }
    return render(request, "clones/class_detail.html", context)


@instructor_required
def class_status(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(services.class_summary(_class_for(request, pk)))


@require_POST
@instructor_required
def class_students(request: HttpRequest, pk: int) -> HttpResponse:
    klass = _class_for(request, pk)
    form = StudentsForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Paste at least one username or e-mail address.")
        return redirect(klass)
    result = students.add_students(
        klass, form.cleaned_data["entries"], by=request.user, mode=form.cleaned_data["mode"]
    )
    return render(request, "clones/students_added.html", {"klass": klass, "result": result})


@require_POST
@instructor_required
def class_launch(request: HttpRequest, pk: int) -> HttpResponse:
    klass = _class_for(request, pk)
    form = LaunchForm(request.POST, versions=services.versions_for(request.user))
    if not form.is_valid():
        messages.error(request, "Launch: " + _errors(form))
        return redirect(klass)
    try:
        made = services.launch(
            klass,
            form.cleaned_data["version"],
            by=request.user,
            full_copy=form.cleaned_data["full_copy"],
            expires_at=form.cleaned_data["expires_at"],
            inactivity_s=form.inactivity_s,
            start=form.cleaned_data["start"] or None,
        )
    except services.CloneNotAllowed as exc:
        messages.error(request, f"Not launched: {exc}")
        return redirect(klass)
    messages.success(request, f"Launching {len(made)} clone(s) of {form.cleaned_data['version']}.")
    return redirect(klass)


@require_POST
@instructor_required
def class_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    klass = _class_for(request, pk)
    if action not in services.ACTIONS:
        raise Http404("no such action")
    done, refused = services.request_for_class(klass, action, user=request.user)
    messages.info(request, f"{action}: {len(done)} clone(s).")
    for line in refused:
        messages.warning(request, line)
    return redirect(klass)


@require_POST
@instructor_required
def class_limits(request: HttpRequest, pk: int) -> HttpResponse:
    klass = _class_for(request, pk)
    return _apply_limits(request, klass.clones.all(), klass)


@require_POST
@instructor_required
def clone_limits(request: HttpRequest, pk: int) -> HttpResponse:
    clone = _clone_for(request, pk, teacher=True)
    return _apply_limits(request, [clone], clone.klass)


def _apply_limits(request: HttpRequest, clones, klass: Class) -> HttpResponse:
    form = LimitsForm(request.POST)
    if form.is_valid():
        count = services.set_limits(
            clones, expires_at=form.cleaned_data["expires_at"], inactivity_s=form.inactivity_s
        )
        messages.success(request, f"Limits set on {count} clone(s).")
    else:
        messages.error(request, _errors(form))
    return redirect(klass)


@require_POST
@instructor_required
def clone_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    clone = _clone_for(request, pk, teacher=True)
    if action not in services.ACTIONS:
        raise Http404("no such action")
    try:
        services.request_action(clone, action, user=request.user)
        messages.info(request, f"Clone {clone.pk} ({clone.student}): {action} requested.")
    except services.CloneNotAllowed as exc:
        messages.error(request, f"Clone {clone.pk}: {exc}")
    return redirect(clone.klass)


# --- students (and instructors) --------------------------------------------------------
@require_POST
@login_required
def power(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """on / off / restart, for the whole clone or one VM (POST `vm`). JSON for scripts
    (Accept: application/json), else back to `next` or My labs."""
    clone = _clone_for(request, pk, teacher=False)
    if action not in POWER:
        raise Http404("no such power action")
    vm = request.POST.get("vm") or None
    try:
        services.request_action(clone, POWER[action], user=request.user, vm=vm)
    except services.CloneNotAllowed as exc:
        if _wants_json(request):
            return JsonResponse({"error": str(exc)}, status=409)
        messages.error(request, str(exc))
        return _back(request, "labs")
    if _wants_json(request):
        teacher = services.can_teach(request.user, clone.klass)
        return JsonResponse(services.clone_summary(clone, for_teacher=teacher), status=202)
    return _back(request, "labs")


@instructor_required
def clone_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One clone for whoever teaches its class: status, VMs, the history of its status and its
    job runs."""
    clone = _clone_for(request, pk, teacher=True)
    context = {
        "clone": clone,
        "c": services.clone_summary(clone),
        "history": clone.history.select_related("by"),
        "runs": Operation.objects.for_target(clone).select_related("requested_by")[:RUNS_SHOWN],
    }
    return render(request, "clones/clone_detail.html", context)


@login_required
def clone_status(request: HttpRequest, pk: int) -> JsonResponse:
    clone = _clone_for(request, pk, teacher=False)
    teacher = services.can_teach(request.user, clone.klass)
    return JsonResponse(services.clone_summary(clone, for_teacher=teacher))


@login_required
def labs(request: HttpRequest) -> HttpResponse:
    """My labs: the signed-in user's own clones, each VM with its console."""
    if students.must_set_password(request.user):
        return redirect("clones:set-password")
    clones = services.clones_of(request.user)
    summaries = [(c, services.clone_summary(c, for_teacher=False)) for c in clones]
    return render(request, "labs.html", {"clones": summaries})


@login_required
def labs_status(request: HttpRequest) -> JsonResponse:
    clones = services.clones_of(request.user)
    return JsonResponse({"clones": [services.clone_summary(c, for_teacher=False) for c in clones]})


def join(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link: choose a password, and you are in."""
    setup = students.find_invitation(token)
    if setup is None:
        return render(request, "clones/join_invalid.html", status=404)
    form = SetPasswordForm(setup.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        students.set_own_password(setup.user, form.cleaned_data["new_password1"])
        login(request, setup.user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, "Welcome! Your password is set.")
        return redirect("labs")
    context = {"form": form, "invited": setup.user, "must_set": True}
    return render(request, "clones/set_password.html", context)


@login_required
def set_password(request: HttpRequest) -> HttpResponse:
    """Change your password. It takes the old one (PasswordChangeForm), except right after
    logging in with a one-time password, when choosing one is the point (SetPasswordForm).
    The session stays valid; other sessions of the account end (the password hash changed)."""
    must_set = students.must_set_password(request.user)
    form_class = SetPasswordForm if must_set else PasswordChangeForm
    form = form_class(request.user, request.POST or None)
    if request.method == "POST" and form.is_valid():
        students.set_own_password(request.user, form.cleaned_data["new_password1"])
        update_session_auth_hash(request, request.user)
        messages.success(request, "Your password is set." if must_set else "Password changed.")
        return redirect("labs")
    context = {"form": form, "invited": None, "must_set": must_set}
    return render(request, "clones/set_password.html", context)


# --- warm images (on the version's page) -----------------------------------------------
def warm_panel(request: HttpRequest, version: ModuleVersion) -> str:
    """The version page's card about its warm image (registered with builds.version_panels)."""
    from django.template.loader import render_to_string

    from ruddervirt.capacity import human

    image = WarmImage.objects.filter(version=version).first()
    context = {
        "version": version,
        "image": image,
        "size": human(image.size_bytes) if image is not None else "",
        "can_manage": warm.can_manage_warm(request.user, version),
    }
    return render_to_string("clones/_warm_panel.html", context, request=request)


def _version_for(request: HttpRequest, pk: int) -> ModuleVersion:
    version = get_object_or_404(ModuleVersion.objects.select_related("module"), pk=pk)
    if not warm.can_manage_warm(request.user, version):
        raise PermissionDenied("This module belongs to another instructor.")
    return version


def _version_page(version: ModuleVersion) -> HttpResponse:
    return redirect("version", version.module.name, version.number)


@require_POST
@instructor_required
def warm_make(request: HttpRequest, pk: int) -> HttpResponse:
    version = _version_for(request, pk)
    try:
        warm.request(version, by=request.user)
    except warm.WarmNotAllowed as exc:
        messages.error(request, f"No warm image: {exc}")
    else:
        messages.success(request, f"Making the warm image of {version}: it boots once, then saves.")
    return _version_page(version)


@require_POST
@instructor_required
def warm_drop(request: HttpRequest, pk: int) -> HttpResponse:
    version = _version_for(request, pk)
    image = get_object_or_404(WarmImage, version=version)
    try:
        warm.drop(image, by=request.user)
    except warm.WarmNotAllowed as exc:
        messages.error(request, f"Not dropped: {exc}")
    else:
        messages.success(request, f"The warm image of {version} is gone.")
    return _version_page(version)
