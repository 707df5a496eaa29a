"""The host's caps on manifests, from the portal's settings (see docs/security.md)."""

from __future__ import annotations

from django.conf import settings

from ruddervirt.manifest import Limits
from ruddervirt.manifest.limits import SETTINGS


def manifest_limits() -> Limits:
    """The caps every manifest accepted by this portal is held to, read from settings at
    each call (so a test or an administrator's change applies at once)."""
    return Limits(**{cap: getattr(settings, name) for cap, name in SETTINGS.items()})
