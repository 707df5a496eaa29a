"""``{% module_topology module %}``: the topology picture on the module page.

Shows the newest version when it was built from the newest manifest revision (then with the
MACs and addresses its template VMs recorded), else the newest revision, with the addresses
a build will give it (MACs are made by the build).
"""

from __future__ import annotations

from django import template
from django.utils.safestring import mark_safe

from modules.models import Module
from modules.topology import render_svg
from ruddervirt.manifest import NO_LIMITS, ManifestInvalid, parse

register = template.Library()


def picture_for(module: Module) -> dict:
    """Context for ``modules/_topology.html``: ``svg`` (safe markup or None) and ``source``."""
    from builds.models import ModuleVersion  # builds build on modules, not the reverse

    latest = module.latest_revision
    version = ModuleVersion.objects.filter(module=module).order_by("-number").first()
    built = None
    if version is not None and (latest is None or version.manifest_sha256 == latest.sha256):
        text, source = version.manifest_text, f"{module.name}@{version.number}"
        built = {tpl.name: tpl.spec.get("nics", []) for tpl in version.vms.all()}
    elif latest is not None:
        text, source = latest.text, f"revision r{latest.number}, not built yet"
    else:
        return {"svg": None, "source": ""}
    try:
        manifest = parse(text, limits=NO_LIMITS)  # accepted when saved
    except ManifestInvalid:
        return {"svg": None, "source": source}
    # ElementTree escaped every name and address: the markup is safe to embed.
    svg = render_svg(manifest, built, title=f"Network topology of {source}")
    return {"svg": mark_safe(svg), "source": source}  # noqa: S308


@register.inclusion_tag("modules/_topology.html")
def module_topology(module: Module) -> dict:
    return picture_for(module)
