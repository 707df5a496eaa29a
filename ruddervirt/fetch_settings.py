"""The portal's `FetchPolicy`, from its settings: the one place the engine's config and the
validator's callers take it from (so the early check at save time and the check before
every download apply the same folders, networks and cap)."""

from __future__ import annotations

from django.conf import settings

from ruddervirt.fetchpolicy import FetchPolicy


def portal_fetch_policy() -> FetchPolicy:
    """RUDDERVIRT_FILE_SOURCE_DIRS, RUDDERVIRT_FETCH_ALLOW_NETS, RUDDERVIRT_MAX_DOWNLOAD_BYTES."""
    return FetchPolicy(
        file_source_dirs=tuple(settings.RUDDERVIRT_FILE_SOURCE_DIRS),
        allow_nets=tuple(settings.RUDDERVIRT_FETCH_ALLOW_NETS),
        max_bytes=int(settings.RUDDERVIRT_MAX_DOWNLOAD_BYTES),
    )
