"""Landing pages: where each role starts."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.roles import instructor_required, is_instructor


@login_required
def home(request: HttpRequest) -> HttpResponse:
    if is_instructor(request.user):
        return redirect("dashboard")
    return redirect("labs")


@instructor_required
def dashboard(request: HttpRequest) -> HttpResponse:
    from modules.services import modules_visible_to

    modules = modules_visible_to(request.user).order_by("-updated_at")[:10]
    return render(request, "dashboard.html", {"modules": modules})


@login_required
def labs(request: HttpRequest) -> HttpResponse:
    """A student's clones. Every signed-in user has this page; it lists only their own."""
    from clones.views import labs as my_labs

    return my_labs(request)


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")
