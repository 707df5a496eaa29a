"""``{% module_versions module %}`` and ``{% module_builds module %}``: a module's versions
and its newest builds, on the module page (modules/detail.html).

Here, not in modules.views, because versions and builds are this app's: the modules app
knows nothing of builds, and its page asks this app for these two parts.
"""

from __future__ import annotations

from django import template

from builds.models import Build, ModuleVersion
from modules.models import Module

register = template.Library()
NEWEST_BUILDS = 20


@register.inclusion_tag("builds/_module_versions.html")
def module_versions(module: Module) -> dict:
    return {
        "module": module,
        "versions": ModuleVersion.objects.filter(module=module).select_related("build"),
    }


@register.inclusion_tag("builds/_module_builds.html")
def module_builds(module: Module) -> dict:
    builds = Build.objects.filter(module=module).select_related("requested_by", "revision")
    return {"module": module, "builds": builds[:NEWEST_BUILDS]}
