"""Console fixtures: a module of alice's with a build in progress."""

from __future__ import annotations

import pytest

from builds.models import Build, BuildStatus
from builds.services import submit_manifest


@pytest.fixture
def running_build(instructor, good_manifest) -> Build:
    """A build of alice's module "lab" with one VM, "web", that is building now."""
    build = submit_manifest(text=good_manifest, module_name="lab", user=instructor, queue=False)
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.BUILDING)
    build.refresh_from_db()
    return build
