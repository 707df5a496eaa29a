"""Running the benchmark recipe through RudderVirt, every Reporter call timestamped.

Two ways (import this module only after ``django.setup()``):

* ``portal``: what an instructor's build does: ``submit_manifest(queue=False)`` then
  ``execute_build`` (manifest validation, database rows, the DBReporter's writes, template
  domains and the module version at the end). The DBReporter is swapped for a timed
  subclass of itself for the duration of the run.
* ``engine``: ``ruddervirt.engine.build.run_build`` alone, with a timed NullReporter.

The build runs in a worker thread; the main thread waits, so that Ctrl-C reaches it and
is turned into a cancel the engine obeys (it stops the VM and removes what it made).
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connections

import builds.runner as runner
import builds.services as services
from bench.build_recipe import VM_NAME
from bench.build_timing import Event, Timeline, timed_reporter_class
from bench.build_watch import GuestWatch, newer_files
from builds.models import Build, BuildLogLine, BuildStatus
from builds.reporting import DBReporter
from ruddervirt import runtime
from ruddervirt.engine.build import BuildPlan, run_build
from ruddervirt.engine.config import EngineConfig
from ruddervirt.engine.context import BuildContext
from ruddervirt.engine.reporter import NullReporter
from ruddervirt.hypervisor.driver import Hypervisor
from ruddervirt.manifest import parse

MODULE = "bench"
STOP_WAIT_S = 300.0


@dataclass(frozen=True)
class RudderRun:
    start: float
    end: float
    events: list[Event]
    output: Path  # the captured disk
    seen: dict[str, float]  # what bench.build_watch saw happen to the VM
    console: str = ""  # the VM's serial console output
    build: Build | None = None  # the portal's record of it (portal mode)


class RudderFailed(RuntimeError):
    pass


def _in_thread(fn: Callable[[], RudderRun], timeline: Timeline, config: EngineConfig) -> RudderRun:
    """Run ``fn`` in a thread; on Ctrl-C ask the build to stop and wait for its cleanup.
    Meanwhile watch the build's VM: its console (any build folder's) and QEMU process."""
    box: dict[str, object] = {}
    console = newer_files(config.storage_root, f"builds/*/{VM_NAME}/serial.log", time.time())
    watch = GuestWatch(console, f"guest={config.name_prefix}".encode())
    watch.start()

    done = threading.Event()

    def body() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()  # this thread's database connection
            done.set()

    # Waiting on an Event, not Thread.join(): a join interrupted by Ctrl-C can leave the
    # thread looking finished (CPython before 3.13), and cleanup would race the build's own.
    threading.Thread(target=body, name="bench-build", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the build finish its cleanup
        timeline.interrupted.set()
        done.wait(STOP_WAIT_S)
        raise
    finally:
        watch.stop()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return replace(box["result"], seen=watch.seen, console=watch.text)  # type: ignore[type-var]


def run_portal(
    text: str,
    user: AbstractBaseUser,
    *,
    echo: Callable[[str], None] | None = None,
    use_cache: bool = False,
) -> RudderRun:
    """Build ``text`` as module MODULE. By default every step runs from the source: with the
    step cache, runs 2..N of the same manifest would reuse run 1's steps and measure the
    cache instead (bench/rebuild_bench.py measures the cache on purpose)."""
    timeline = Timeline()

    def build() -> RudderRun:
        original = runner.DBReporter
        runner.DBReporter = timed_reporter_class(DBReporter, timeline)
        try:
            start = time.monotonic()
            submitted = services.submit_manifest(
                text=text, module_name=MODULE, user=user, queue=False, use_cache=use_cache
            )
            done = runner.execute_build(submitted.pk, echo=echo)
            end = time.monotonic()
        finally:
            runner.DBReporter = original
        return RudderRun(start, end, timeline.events(), _portal_output(done), {}, build=done)

    return _in_thread(build, timeline, runtime.engine_config())


def _portal_output(build: Build) -> Path:
    if build.status != BuildStatus.SUCCEEDED:
        lines = BuildLogLine.objects.filter(build=build).order_by("-seq")[:25]
        tail = "\n".join(reversed([line.text for line in lines]))
        raise RudderFailed(f"build {build.pk} ended {build.status}: {build.error}\n{tail}")
    from ruddervirt.spec import disk_files

    [vm] = build.version.version_spec.vms
    return disk_files(vm, runtime.engine_config().storage_root)[0]


def run_engine(
    text: str,
    index: int,
    *,
    hv: Hypervisor,
    config: EngineConfig,
    echo: Callable[[str], None] | None = None,
) -> RudderRun:
    timeline = Timeline()
    reporter = timed_reporter_class(NullReporter, timeline)(echo=echo is not None)
    workdir = config.storage_root / "builds" / f"engine-{index}"

    def build() -> RudderRun:
        plan = BuildPlan(key=f"e{index}", manifest=parse(text), workdir=workdir)
        start = time.monotonic()
        try:
            result = run_build(plan, BuildContext(config=config, hv=hv, reporter=reporter))
        except Exception as exc:
            tail = "\n".join(text for _vm, _stream, text in reporter.lines[-25:])
            raise RudderFailed(f"{exc}\n{tail}") from exc
        end = time.monotonic()
        disk = result.capture_dir / str(result.spec.vms[0].disks[0].path)
        return RudderRun(start, end, timeline.events(), disk, {})

    return _in_thread(build, timeline, config)


def remove_engine_workdir(config: EngineConfig, index: int) -> None:
    shutil.rmtree(config.storage_root / "builds" / f"engine-{index}", ignore_errors=True)
