"""Landing pages: where each role starts."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

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


@require_GET
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """The portal process answers (for a load balancer, or a wait for daphne's start)."""
    return HttpResponse("ok", content_type="text/plain")


@require_GET
@never_cache
def healthz_ready(request: HttpRequest) -> JsonResponse:
    """Whether the database, Redis, libvirtd and the workers answer: 200 when all do, 503
    when one does not. Anyone may ask; only which checks passed is said, and what each
    found (URIs, errors) only to a superuser. The checks run at most every few seconds
    (ruddervirt.health.cached_portal_checks), so asking often costs nothing."""
    from ruddervirt import health

    checks = health.cached_portal_checks()
    ok = all(check.ok for check in checks)
    body: dict[str, object] = {
        "status": "ok" if ok else "failing",
        "checks": {check.name: "ok" if check.ok else "fail" for check in checks},
    }
    if request.user.is_superuser:
        body["detail"] = {check.name: check.message for check in checks}
    return JsonResponse(body, status=200 if ok else 503)
