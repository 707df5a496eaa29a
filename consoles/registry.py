"""Which VMs a console can reach, and who may open them.

A console target is (kind, object id, VM name). Each kind names a module that owns the
permission rule for its objects:

    resolve(user, object_id: int, vm_name: str) -> str
        The libvirt domain name of that VM when `user` may open its console. Raises
        django.core.exceptions.PermissionDenied (403) or django.http.Http404 (404).

    locate(domain_name: str) -> ConsoleAddress          (optional)
        Where that domain's VNC server listens. Without it the portal asks the hypervisor.

    note_activity(object_id: int) -> None                (optional)
        Someone typed or clicked in a console of that object (called at most every
        ACTIVITY_EVERY_S per console; e.g. to postpone an idle shutdown). Without it, the
        hook named in DEFAULT_ACTIVITY_HOOKS, if any.

Kinds "build" (builds.consoles) and "clone" (clones.consoles) are built in; a deployment or a
benchmark may replace the table with the RUDDERVIRT_CONSOLE_KINDS setting. A kind whose module
does not exist (yet) answers 404 for every target, so the portal runs before it is written.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Any

from django.conf import settings
from django.http import Http404
from django.utils.module_loading import import_string

from ruddervirt.hypervisor.driver import ConsoleAddress

DEFAULT_KINDS: dict[str, str] = {
    "build": "builds.consoles",
    "clone": "clones.consoles",
}


DEFAULT_ACTIVITY_HOOKS: dict[str, str] = {
    "clone": "clones.services.note_console_activity",
}


def kinds() -> dict[str, str]:
    return getattr(settings, "RUDDERVIRT_CONSOLE_KINDS", DEFAULT_KINDS)


def _module_for(kind: str) -> ModuleType:
    path = kinds().get(kind)
    if path is None:
        raise Http404(f"no console kind {kind!r}")
    try:
        return import_module(path)
    except ModuleNotFoundError as exc:
        # Only "the module is not there" means 404; an import error inside it is a bug.
        if exc.name and (path == exc.name or path.startswith(exc.name + ".")):
            raise Http404(f"consoles of kind {kind!r} are not available") from exc
        raise


def resolve(user: Any, kind: str, object_id: int, vm_name: str) -> str:
    """The domain name of the target when `user` may open it (PermissionDenied / Http404)."""
    domain = _module_for(kind).resolve(user, object_id, vm_name)
    if not domain:
        raise Http404("this VM has no console")
    return domain


def locate(kind: str, domain_name: str) -> ConsoleAddress:
    """Where the VNC server of `domain_name` listens right now (blocking: call off the
    event loop). Raises the hypervisor's InvalidState when the domain is not running."""
    module = _module_for(kind)
    custom = getattr(module, "locate", None)
    if custom is not None:
        return custom(domain_name)
    from ruddervirt.runtime import get_hypervisor

    return get_hypervisor().console_address(domain_name)


def note_activity(kind: str, object_id: int) -> None:
    """Tell the kind's owner that a person used a console of `object_id` (blocking: call
    off the event loop). No-op for kinds without a hook."""
    hook = getattr(_module_for(kind), "note_activity", None)
    if hook is None:
        path = DEFAULT_ACTIVITY_HOOKS.get(kind)
        if path is None:
            return
        hook = import_string(path)
    hook(object_id)
