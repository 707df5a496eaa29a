"""The console page and the token it asks for before each (re)connect."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_POST

from consoles import services


@login_required
@xframe_options_sameorigin  # the build page embeds it beside a handbuild step's instructions
def page(request: HttpRequest, kind: str, object_id: int, vm: str) -> HttpResponse:
    target = services.check_access(request.user, kind, object_id, vm)
    context = {
        "target": target,
        "embed": request.GET.get("embed") == "1",
        "max_session": services.duration(services.max_session_s()),
    }
    return render(request, "consoles/console.html", context)


@require_POST
@never_cache
def token(request: HttpRequest, kind: str, object_id: int, vm: str) -> JsonResponse:
    """JSON {token, ws_path, subprotocols, expires_in}; 403/404 JSON {error} otherwise
    (never a login redirect: the caller is a script that must know it was refused)."""
    try:
        issued = services.issue_token(request.user, kind, object_id, vm)
    except PermissionDenied as exc:
        return JsonResponse({"error": str(exc) or "forbidden"}, status=403)
    except Http404 as exc:
        return JsonResponse({"error": str(exc) or "not found"}, status=404)
    return JsonResponse(issued.as_json())
