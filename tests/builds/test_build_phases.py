"""Phases and step states are the engine's enums; the models' choices come from them, and
the reporter moves the build's status only through its transition."""

from __future__ import annotations

import pytest

from builds.models import Build, BuildStatus, BuildStep, BuildVM
from builds.reporting import STATUS_FOR_PHASE, DBReporter
from builds.services import request_cancel, start_build
from modules.services import create_module
from ruddervirt.engine.errors import BuildCancelled
from ruddervirt.engine.phases import BuildPhase, StepState, VMPhase

pytestmark = pytest.mark.django_db


@pytest.fixture
def build(instructor, good_manifest) -> Build:
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    return start_build(module=module, user=instructor, queue=False)


def test_every_vm_phase_and_step_state_of_the_engine_is_a_model_choice():
    phases = dict(BuildVM._meta.get_field("phase").choices)
    states = dict(BuildStep._meta.get_field("status").choices)
    assert set(phases) == {p.value for p in VMPhase}
    assert set(states) == {s.value for s in StepState}
    assert phases["WaitingForSSH"] == "Waiting For Ssh"  # the labels Django gave them before


def test_every_build_phase_has_the_status_of_the_same_name():
    assert {p: str(s) for p, s in STATUS_FOR_PHASE.items()} == {p: p.value for p in BuildPhase}
    assert all(s in BuildStatus.values for s in STATUS_FOR_PHASE.values())


def test_a_build_phase_moves_the_status_and_records_it(build):
    reporter = DBReporter(build)
    try:
        reporter.build_phase(BuildPhase.NETWORKING)
    finally:
        reporter.close()
    build.refresh_from_db()
    assert build.status == BuildStatus.NETWORKING
    assert build.history.last().to_status == BuildStatus.NETWORKING


def test_a_cancel_that_won_the_race_stops_the_engine_as_a_cancel(build, instructor):
    request_cancel(build, user=instructor)  # cancelled before the worker moved it on
    reporter = DBReporter(build)
    try:
        with pytest.raises(BuildCancelled, match="the build is Cancelled now"):
            reporter.build_phase(BuildPhase.NETWORKING)
    finally:
        reporter.close()
    assert Build.objects.get(pk=build.pk).status == BuildStatus.CANCELLED
