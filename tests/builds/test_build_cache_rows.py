"""The step cache in the portal: Reused step rows, the build page, the provenance, the
per-build switch and `manage.py build_cache` (records made directly, no VM needed)."""

from __future__ import annotations

import io
import json
import time

import pytest
from django.core.management import call_command

from builds.models import BuildStep, StepStatus
from builds.reporting import DBReporter
from builds.services import build_summary, start_build
from modules.services import create_module
from ruddervirt.engine.stepcache import CheckpointRecord, Lease, StepCache
from ruddervirt.runtime import engine_config
from tests.helpers import client_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def build(instructor, good_manifest):
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    return start_build(module=module, user=instructor, queue=False)


@pytest.fixture
def store(settings, tmp_path) -> StepCache:
    settings.RUDDERVIRT_STORAGE_ROOT = tmp_path
    return StepCache(engine_config().step_cache_dir)


def test_a_reused_step_says_where_from_and_the_time_saved_on_the_build_page(
    build, instructor
) -> None:
    reporter = DBReporter(build)
    reporter.step_reused("web", 0, key="k" * 64, from_build=7, saved_s=12.5)
    reporter.close()
    step = BuildStep.objects.get(vm__build=build, index=0)
    assert (step.status, step.reused_from, step.saved_s) == (StepStatus.REUSED, 7, 12.5)
    page = client_for(instructor).get(f"/builds/{build.pk}/").content.decode()
    assert "reused from build #7 · saved 12.5s" in page
    assert build.cache_starts == {"web": {"key": "k" * 64, "build": 7, "steps": 1}}
    assert build_summary(build, detail=True)["vms"][0]["steps"][0]["reused_from"] == 7


def test_a_build_uses_the_cache_unless_asked_not_to(instructor, good_manifest) -> None:
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    assert start_build(module=module, user=instructor, queue=False).use_cache is True
    off = start_build(module=module, user=instructor, queue=False, use_cache=False)
    assert off.use_cache is False


def put(store: StepCache, key: str, used: float) -> None:
    store.layers.mkdir(parents=True, exist_ok=True)
    store.layer_path(f"{key}.qcow2").write_bytes(b"x")
    store.put(
        CheckpointRecord(
            key=key, build="b3", vm="web", step_index=1, step_name="two",
            chains=((f"{key}.qcow2",),), created=used, last_used=used, size=1, build_id=3,
        )
    )  # fmt: skip


def test_build_cache_lists_and_clears_checkpoints_but_not_one_a_running_build_holds(
    store,
) -> None:
    put(store, "a" * 64, used=time.time() - 3 * 86400)
    put(store, "b" * 64, used=time.time())
    out = io.StringIO()
    call_command("build_cache", "list", "--json", stdout=out)
    listed = json.loads(out.getvalue())["checkpoints"]
    assert [(c["key"][0], c["build"], c["step"]) for c in listed] == [("a", 3, 2), ("b", 3, 2)]
    out = io.StringIO()
    call_command("build_cache", "clear", "--older-than", "48h", stdout=out)
    assert "removed 1 checkpoint(s)" in out.getvalue()
    store.hold(Lease("b9", keys={"b" * 64}))
    call_command("build_cache", "clear", stdout=io.StringIO())
    assert [r.key for r in store.records()] == ["b" * 64]


def test_a_step_cache_cap_of_zero_turns_the_cache_off_rather_than_lifting_the_cap(
    settings,
) -> None:
    settings.RUDDERVIRT_STEP_CACHE_MAX_BYTES = 0
    assert engine_config().step_cache is False
    settings.RUDDERVIRT_STEP_CACHE_MAX_BYTES = 2**30
    assert engine_config().step_cache is True and engine_config().step_cache_max_bytes == 2**30
