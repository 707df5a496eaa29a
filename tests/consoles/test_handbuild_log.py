"""Continue / Fail write to a build's log while its worker writes too: no line is lost."""

from __future__ import annotations

import pytest

from builds.models import BuildLogLine
from builds.reporting import DBReporter
from builds.runner import append_log

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_line_from_the_page_and_the_workers_buffered_lines_all_reach_the_log(running_build):
    reporter = DBReporter(running_build)
    reporter._stop.set()  # flush by hand: the collision must happen, not depend on timing
    reporter._flusher.join()
    reporter.log("waiting for a person: log in", vm="web")
    reporter.log("still waiting", vm="web")
    # The page's Continue appends with the next free seq, which the worker already used.
    append_log(running_build, "continue pressed by alice", vm="web")
    reporter.flush()
    reporter.log("continued by a person", vm="web")
    reporter.flush()
    lines = list(BuildLogLine.objects.filter(build=running_build).order_by("seq"))
    assert [line.text for line in lines] == [
        "continue pressed by alice",
        "waiting for a person: log in",
        "still waiting",
        "continued by a person",
    ]
    assert len({line.seq for line in lines}) == 4
