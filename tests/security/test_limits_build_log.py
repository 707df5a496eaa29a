"""`yes` in a shell step must not fill the database: a build log keeps at most
RUDDERVIRT_BUILD_LOG_MAX_LINES lines of at most RUDDERVIRT_BUILD_LOG_MAX_LINE_CHARS
characters, and says how many it did not keep."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from builds.models import Build, BuildLogLine
from builds.reporting import DBReporter
from modules.models import ManifestRevision, Module, sha256_text

pytestmark = pytest.mark.django_db(transaction=True)
TEXT = "vms: [{name: web, source: {url: 'https://images.example.edu/a-20250101.qcow2'}}]\n"


@pytest.fixture
def build(instructor) -> Build:
    module = Module.objects.create(name="flood", description="", owner=instructor)
    revision = ManifestRevision.objects.create(
        module=module, number=1, text=TEXT, sha256=sha256_text(TEXT), created_by=instructor
    )
    return Build.objects.create(
        module=module,
        revision=revision,
        manifest_text=TEXT,
        manifest_sha256=revision.sha256,
        requested_by=instructor,
    )


@pytest.fixture
def capped(settings):
    settings.RUDDERVIRT_BUILD_LOG_MAX_LINES = 1000
    settings.RUDDERVIRT_BUILD_LOG_MAX_LINE_CHARS = 200


def yes(lines: int, *, per_chunk: int = 4096) -> Iterator[str]:
    """What `yes | head -n LINES` sends over SSH: chunks of many lines each."""
    left = lines
    while left:
        n = min(per_chunk, left)
        yield "y\n" * n
        left -= n


def stored(build: Build) -> list[BuildLogLine]:
    return list(BuildLogLine.objects.filter(build=build).order_by("seq"))


def test_yes_in_a_shell_step_keeps_the_cap_and_counts_the_rest(build, capped) -> None:
    reporter = DBReporter(build)
    for chunk in yes(200_000):
        reporter.log(chunk, vm="web", stream="stdout")
    reporter.close()
    lines = stored(build)
    assert len(lines) == 1001
    assert all(line.text == "y" for line in lines[:1000])
    assert lines[-1].text.startswith("... 199000 more lines not kept")
    assert "at most 1000 lines" in lines[-1].text
    assert "RUDDERVIRT_BUILD_LOG_MAX_LINES" in lines[-1].text


def test_the_engines_phase_and_error_lines_are_kept_past_the_cap(build, capped) -> None:
    reporter = DBReporter(build)
    reporter.log("y\n" * 5000, vm="web", stream="stdout")
    reporter.log("step 2/2: after (shell)", vm="web", stream="phase")
    reporter.log("still more output", vm="web", stream="stdout")
    reporter.log("build failed: step after exited with 1", stream="error")
    reporter.close()
    texts = [line.text for line in stored(build)][1000:]
    assert texts[:2] == ["step 2/2: after (shell)", "build failed: step after exited with 1"]
    assert texts[2].startswith("... 4001 more lines not kept")


def test_a_line_longer_than_the_cap_is_cut_and_says_by_how_much(build, capped) -> None:
    reporter = DBReporter(build)
    reporter.log("x" * 10_000, vm="web", stream="stdout")
    reporter.close()
    (line,) = stored(build)
    assert line.text == "x" * 200 + " ... [9800 more characters not kept]"


def test_a_retry_gets_no_fresh_allowance(build, capped) -> None:
    first = DBReporter(build)
    first.log("y\n" * 1500, vm="web", stream="stdout")
    first.close()
    second = DBReporter(build)  # the next attempt of the same build
    second.log("y\n" * 10, vm="web", stream="stdout")
    second.close()
    texts = [line.text for line in stored(build)]
    assert len(texts) == 1002
    assert texts[1000].startswith("... 500 more lines not kept")
    assert texts[1001].startswith("... 10 more lines not kept")


def test_under_the_cap_nothing_is_dropped_or_announced(build, capped) -> None:
    reporter = DBReporter(build)
    reporter.log("y\n" * 999, vm="web", stream="stdout")
    reporter.close()
    lines = stored(build)
    assert len(lines) == 999
    assert not any("not kept" in line.text for line in lines)
