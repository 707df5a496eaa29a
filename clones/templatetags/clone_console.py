"""The clone part of the console page: power buttons, the VM switch, the clone's limits."""

from __future__ import annotations

from django import template

from clones.models import Clone
from clones.services import can_teach

register = template.Library()


@register.inclusion_tag("clones/console_tools.html", takes_context=True)
def clone_console_tools(context, target) -> dict:
    """For a console target of kind "clone": what its user may do and switch to."""
    request = context["request"]
    clone = (
        Clone.objects.select_related("klass", "version__module")
        .prefetch_related("vms")
        .filter(pk=target.object_id)
        .first()
    )
    if clone is None:
        return {"clone": None}
    teacher = can_teach(request.user, clone.klass)
    return {
        "clone": clone,
        "vms": [vm for vm in clone.vms.all() if teacher or not vm.invisible],
        "current": target.vm,
        "csrf_token": context.get("csrf_token"),
        "next": request.get_full_path(),
    }
