"""The shared transition factory (modules.lifecycle), on the Build model and a small table."""

from __future__ import annotations

import pytest

from builds.models import Build, BuildStatus, BuildStatusChange
from builds.services import start_build
from modules.lifecycle import InvalidTransition, transition_for
from modules.services import create_module

pytestmark = pytest.mark.django_db
S = BuildStatus
TABLE = {S.PENDING: {S.NETWORKING, S.CANCELLED}, S.NETWORKING: {S.FAILED}}


@pytest.fixture
def build(instructor, good_manifest) -> Build:
    module = create_module(name="lab", description="", text=good_manifest, user=instructor).module
    return start_build(module=module, user=instructor, queue=False)


def moves(build: Build) -> list[tuple[str, str, object, str]]:
    rows = BuildStatusChange.objects.filter(subject=build).exclude(from_status="")
    return [(r.from_status, r.to_status, r.by, r.why) for r in rows]


def test_an_allowed_move_updates_the_row_and_the_copy_and_writes_one_history_row(build, instructor):
    transition = transition_for(Build, TABLE, BuildStatusChange)
    moved = transition(build, S.NETWORKING, by=instructor, why="a person asked")
    assert moved is build and build.status == S.NETWORKING
    assert Build.objects.get(pk=build.pk).status == S.NETWORKING
    assert moves(build) == [(S.PENDING, S.NETWORKING, instructor, "a person asked")]


def test_a_refused_move_names_from_and_to_and_writes_no_history(build):
    transition = transition_for(Build, TABLE, BuildStatusChange)
    with pytest.raises(InvalidTransition, match="cannot go from Pending to Failed") as refused:
        transition(build, S.FAILED, why="never written")
    assert (refused.value.current, refused.value.new) == (S.PENDING, S.FAILED)
    assert Build.objects.get(pk=build.pk).status == S.PENDING and moves(build) == []


def test_only_from_refuses_a_status_outside_it(build):
    transition = transition_for(Build, TABLE, BuildStatusChange)
    with pytest.raises(InvalidTransition):
        transition(build, S.NETWORKING, only_from={S.FAILED})
    assert moves(build) == []


def test_a_move_that_loses_the_race_to_another_writer_raises_and_writes_no_history(build):
    def meanwhile(obj, current, new, fields):  # another writer gets in between read and UPDATE
        Build.objects.filter(pk=obj.pk).update(status=S.CANCELLED)
        return fields

    transition = transition_for(Build, TABLE, BuildStatusChange, changes=meanwhile)
    with pytest.raises(InvalidTransition) as lost:
        transition(build, S.NETWORKING)
    assert (lost.value.current, lost.value.new) == (S.CANCELLED, S.NETWORKING)
    # (the simulated writer shares this test's connection, so it is rolled back too)
    assert moves(build) == []


def test_with_the_callers_copy_as_claim_a_stale_copy_lost_the_race(build):
    transition = transition_for(Build, TABLE, BuildStatusChange, callers_copy_is_claim=True)
    stale = Build.objects.get(pk=build.pk)
    Build.objects.filter(pk=build.pk).update(status=S.NETWORKING)  # moved by someone else
    with pytest.raises(InvalidTransition, match="from Networking to Failed"):
        transition(stale, S.FAILED)
    assert stale.status == S.NETWORKING and moves(build) == []


def test_without_the_claim_the_rows_status_counts(build):
    transition = transition_for(Build, TABLE, BuildStatusChange)
    stale = Build.objects.get(pk=build.pk)
    Build.objects.filter(pk=build.pk).update(status=S.NETWORKING)
    transition(stale, S.FAILED)
    assert moves(build) == [(S.NETWORKING, S.FAILED, None, "")]


def test_the_history_row_goes_with_the_update_when_the_history_write_fails(build, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(BuildStatusChange.objects, "create", broken)
    transition = transition_for(Build, TABLE, BuildStatusChange)
    with pytest.raises(RuntimeError):
        transition(build, S.NETWORKING)
    assert Build.objects.get(pk=build.pk).status == S.PENDING  # rolled back with it


def test_why_defaults_to_the_error_recorded_and_fields_are_written(build):
    transition = transition_for(Build, TABLE, BuildStatusChange)
    transition(build, S.CANCELLED, error="no longer wanted")
    assert Build.objects.get(pk=build.pk).error == "no longer wanted" == build.error
    assert moves(build) == [(S.PENDING, S.CANCELLED, None, "no longer wanted")]


def test_starting_a_build_records_who_asked_for_it(build, instructor):
    first = BuildStatusChange.objects.get(subject=build)
    assert (first.from_status, first.to_status, first.by) == ("", S.PENDING, instructor)
