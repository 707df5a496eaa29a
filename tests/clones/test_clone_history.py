"""A clone's status history, written by the real services and runner, and its page."""

from __future__ import annotations

import pytest

from clones import services
from clones.models import CloneStatus, CloneStatusChange
from clones.runner import execute, run_inline
from tests.helpers import client_for

pytestmark = pytest.mark.django_db(transaction=True)
S = CloneStatus


@pytest.fixture
def clone(klass, version, instructor, fake_hv):
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([c.pk for c in made], "provision")
    return made[0]


def history(clone) -> list[tuple[str, str, object, str]]:
    rows = CloneStatusChange.objects.filter(subject=clone)
    return [(r.from_status, r.to_status, r.by, r.why) for r in rows]


def test_launch_and_provisioning_are_recorded(clone, instructor):
    assert [row[:3] for row in history(clone)] == [
        ("", S.PENDING, instructor),
        (S.PENDING, S.PROVISIONING, None),
        (S.PROVISIONING, S.RUNNING, None),
    ]


def test_stopping_a_clone_records_who_asked_and_the_workers_move(clone, instructor):
    services.request_action(clone, "stop", user=instructor, queue=False)
    execute(clone.pk, "stop")
    assert history(clone)[-2:] == [
        (S.RUNNING, S.STOPPING, instructor, f"stop requested by {instructor}"),
        (S.STOPPING, S.STOPPED, None, ""),
    ]


def test_a_refused_request_writes_no_history(clone, instructor):
    services.request_action(clone, "stop", user=instructor, queue=False)
    before = history(clone)
    with pytest.raises(services.CloneNotAllowed):
        services.request_action(clone, "start", user=instructor, queue=False)
    assert history(clone) == before


def test_the_clone_page_shows_the_history_to_its_teachers_only(
    clone, instructor, other_instructor, student
):
    services.request_action(clone, "stop", user=instructor, queue=False)
    page = client_for(instructor).get(f"/clones/{clone.pk}/")
    assert page.status_code == 200
    text = page.content.decode()
    assert '<section class="card" id="history">' in text
    assert f"stop requested by {instructor}" in text and 'data-history-status="Stopping"' in text
    for user in (other_instructor, student):
        assert client_for(user).get(f"/clones/{clone.pk}/").status_code == 403, user


def test_the_class_page_links_each_clone_to_its_page(clone, instructor):
    page = client_for(instructor).get(f"/clones/classes/{clone.klass_id}/").content.decode()
    assert f'href="/clones/{clone.pk}/"' in page


def test_the_clone_page_lists_its_runs(clone, instructor):
    services.request_action(clone, "stop", user=instructor, queue=False)
    execute(clone.pk, "stop")
    page = client_for(instructor).get(f"/clones/{clone.pk}/").content.decode()
    assert 'data-run-kind="clone.provision" data-run-status="Succeeded"' in page
    assert 'data-run-kind="clone.stop" data-run-status="Succeeded"' in page
    assert page.index("clone.stop") < page.index("clone.provision")  # newest first
