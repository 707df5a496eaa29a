"""Parts of a version's page that the apps above builds add (clones: the warm image).

builds knows no higher app: clones registers a panel in its AppConfig.ready, and the
version page (builds.views.version_diff) renders every registered panel, in order.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest
from django.utils.safestring import SafeString

# panel(request, version) -> the HTML of its card (rendered by its own template)
Panel = Callable[[HttpRequest, object], SafeString | str]
_panels: dict[str, Panel] = {}


def register(name: str, panel: Panel) -> None:
    _panels[name] = panel


def render_all(request: HttpRequest, version) -> list[SafeString | str]:
    return [panel(request, version) for panel in _panels.values()]
