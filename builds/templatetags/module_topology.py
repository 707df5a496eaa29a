"""``{% module_topology module %}``: the topology picture on the module page.

Here, not in modules, because it reads the module's versions, which this app keeps; the
drawing itself is modules.topology.

Shows the newest version when it was built from the newest manifest revision (from its
record: the MACs and addresses its build resolved), else the newest revision, with the
addresses a build will give it (MACs are made by the build).
"""

from __future__ import annotations

from django import template
from django.utils.safestring import mark_safe

from builds.models import ModuleVersion
from modules.models import Module
from modules.topology import picture_of_manifest, picture_of_version, render_svg
from ruddervirt.manifest import NO_LIMITS, validate
from ruddervirt.spec import SpecError

register = template.Library()


def picture_for(module: Module) -> dict:
    """Context for ``modules/_topology.html``: ``svg`` (safe markup or None) and ``source``."""
    latest = module.latest_revision
    version = ModuleVersion.objects.filter(module=module).order_by("-number").first()
    if version is not None and (latest is None or version.manifest_sha256 == latest.sha256):
        source = f"{module.name}@{version.number}"
        try:
            picture = picture_of_version(version.version_spec)
        except SpecError:
            return {"svg": None, "source": source}
    elif latest is not None:
        source = f"revision r{latest.number}, not built yet"
        # The editor's check (a revision is text until built), without today's caps: the
        # revision was accepted when it was saved.
        result = validate(latest.text, limits=NO_LIMITS)
        if result.manifest is None:
            return {"svg": None, "source": source}
        picture = picture_of_manifest(result.manifest)
    else:
        return {"svg": None, "source": ""}
    # ElementTree escaped every name and address: the markup is safe to embed.
    svg = render_svg(picture, title=f"Network topology of {source}")
    return {"svg": mark_safe(svg), "source": source}  # noqa: S308


@register.inclusion_tag("modules/_topology.html")
def module_topology(module: Module) -> dict:
    return picture_for(module)
