"""Whether a build may start now: how many its requester has going, and the host's room.

A build is refused at submit, with what is missing, when it does not fit now; it is never
queued to wait for room (a queued build that cannot start would hold a worker and surprise
its instructor hours later). Settings: RUDDERVIRT_MAX_CONCURRENT_BUILDS, and those of
clones.capacity for memory and disk.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model

from builds.models import ACTIVE, Build
from ruddervirt.manifest import Manifest


def refusal(manifest: Manifest, *, user) -> str | None:
    """Why `user` may not start a build of `manifest` now, or None when it may.

    Call it inside the transaction that creates the build: it locks the user's row, so two
    submissions of one person are counted one after the other (SQLite's IMMEDIATE
    transactions serialise every writer anyway)."""
    from clones import capacity  # clones build on builds, not the reverse

    get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    limit = settings.RUDDERVIRT_MAX_CONCURRENT_BUILDS
    going = Build.objects.filter(requested_by=user, status__in=ACTIVE).count()
    if going >= limit:
        return (
            f"you have {going} build(s) queued or running, and one person may have at most "
            f"{limit} at once (RUDDERVIRT_MAX_CONCURRENT_BUILDS): wait for one to finish or "
            "cancel one"
        )
    problems = capacity.build_problems(manifest)
    if problems:
        return "this build does not fit on the host now: " + "; ".join(problems)
    return None
