"""Reconcile: records follow libvirt, limits are enforced, leftovers removed (fake VMs)."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from clones import services
from clones.models import Clone, CloneStatus
from clones.reconcile import reconcile_clones
from clones.runner import run_inline
from jobs import runner as jobs
from jobs.models import Operation
from jobs.reconcile import reconcile
from ruddervirt.hypervisor.driver import DomainState

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clone(klass, version, instructor, fake_hv) -> Clone:
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([c.pk for c in made], "provision")
    return Clone.objects.get(pk=made[0].pk)


def domains(clone: Clone) -> list[str]:
    return list(clone.vms.values_list("domain_name", flat=True))


def test_a_stop_requested_while_reconcile_looks_at_the_vms_is_left_to_its_job(
    clone, fake_hv, monkeypatch
):
    """Reconcile read the clone as Running; before it acts, a user's Stop moves it to
    Stopping. The VMs are off by then, but the move to Stopped is the stop job's."""
    from clones import reconcile

    real = reconcile.record_states

    def states_while_a_user_stops_it(target, hv):
        Clone.objects.filter(pk=target.pk).update(status=CloneStatus.STOPPING)
        return real(target, hv)

    for name in domains(clone):
        fake_hv.destroy(name)
    monkeypatch.setattr(reconcile, "record_states", states_while_a_user_stops_it)
    actions = reconcile.sync_states(fake_hv)
    clone.refresh_from_db()
    assert clone.status == CloneStatus.STOPPING and actions == []


def test_vms_powered_off_outside_the_portal_make_the_clone_stopped(clone, fake_hv):
    for name in domains(clone):
        fake_hv.destroy(name)
    actions = reconcile_clones(fake_hv)
    clone.refresh_from_db()
    assert clone.status == CloneStatus.STOPPED
    assert "outside the portal" in clone.note
    assert any(f"clone {clone.pk}: now Stopped" in a for a in actions)


def test_a_vm_started_outside_the_portal_makes_the_clone_running(clone, fake_hv, instructor):
    services.request_action(clone, "stop", user=instructor, queue=False)
    run_inline([clone.pk], "stop")
    fake_hv.start(domains(clone)[0])
    reconcile_clones(fake_hv)
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.RUNNING


def test_a_domain_removed_outside_the_portal_fails_the_clone_with_the_reason(clone, fake_hv):
    web = clone.vms.get(name="web").domain_name
    fake_hv.destroy(web)
    fake_hv.undefine(web)
    reconcile_clones(fake_hv)
    clone.refresh_from_db()
    assert clone.status == CloneStatus.FAILED
    assert "web were removed outside the portal" in clone.error


def test_an_idle_clone_is_shut_down_and_the_student_is_told_why(clone, fake_hv):
    Clone.objects.filter(pk=clone.pk).update(
        inactivity_timeout_s=1800, last_activity_at=timezone.now() - timedelta(minutes=31)
    )
    reconcile_clones(fake_hv)
    clone.refresh_from_db()
    assert clone.status == CloneStatus.STOPPED
    assert clone.note == "stopped after 30 min without console input"
    assert all(fake_hv.state(d) is DomainState.SHUTOFF for d in domains(clone))


def test_recent_console_input_keeps_the_clone_running(clone, fake_hv):
    Clone.objects.filter(pk=clone.pk).update(
        inactivity_timeout_s=1800, last_activity_at=timezone.now() - timedelta(minutes=31)
    )
    services.note_console_activity(clone.pk)
    reconcile_clones(fake_hv)
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.RUNNING


def test_an_expired_clone_is_shut_down(clone, fake_hv):
    Clone.objects.filter(pk=clone.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    reconcile_clones(fake_hv)
    clone.refresh_from_db()
    assert clone.status == CloneStatus.STOPPED and clone.note.startswith("expired on")


def test_leftovers_of_deleted_clones_are_removed(clone, fake_hv):
    folder = Path(clone.storage_path)
    assert folder.exists()
    key = clone.key
    Clone.objects.filter(pk=clone.pk).delete()  # as if the row went without the host
    actions = reconcile(fake_hv)
    prefix = f"{settings.RUDDERVIRT_NAME_PREFIX}{key}-"
    assert not [d for d in fake_hv.domains if d.startswith(prefix)]
    assert not [n for n in fake_hv.networks if n.startswith(prefix)]
    assert not folder.exists()
    assert any("leftover domain" in a for a in actions)
    others = Clone.objects.all()
    assert all(
        fake_hv.state(vm.domain_name) is DomainState.RUNNING for c in others for vm in c.vms.all()
    )


def test_a_clone_whose_worker_died_is_failed(clone, fake_hv):
    Clone.objects.filter(pk=clone.pk).update(status=CloneStatus.PROVISIONING)
    op = jobs.submit("clone.provision", clone, queue=False)
    dead = f"{socket.gethostname()}:999999999"
    Operation.objects.filter(pk=op.pk).update(status="Running", worker=dead)
    reconcile(fake_hv)
    assert Operation.objects.get(pk=op.pk).status == "Interrupted"
    clone.refresh_from_db()
    assert clone.status == CloneStatus.FAILED and "interrupted" in clone.error


def test_nothing_to_do_says_nothing(clone, fake_hv):
    assert reconcile_clones(fake_hv) == []
