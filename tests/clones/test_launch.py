"""Launching a version for a class, acting on clones, and the capacity check (fake VMs)."""

from __future__ import annotations

import pytest
from django.conf import settings

from clones import services
from clones.models import Clone, CloneStatus, CloneVM
from clones.runner import execute, run_inline
from ruddervirt.hypervisor.driver import DomainState
from tests.clones.conftest import make_version

pytestmark = pytest.mark.django_db(transaction=True)
GIB = 1024**3


def prefix() -> str:
    return settings.RUDDERVIRT_NAME_PREFIX


def test_launching_in_process_prepares_every_clone_before_starting_any(
    klass, version, instructor, fake_hv
):
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([c.pk for c in made], "provision")
    calls = [method for method, _name in fake_hv.calls if method in ("define", "start_paused")]
    assert calls == ["define"] * 4 + ["start_paused"] * 4


def launch_and_run(klass, version, instructor, **kwargs) -> list[Clone]:
    made = services.launch(klass, version, by=instructor, queue=False, **kwargs)
    run_inline([c.pk for c in made], "provision")
    return list(Clone.objects.filter(pk__in=[c.pk for c in made]))


def test_launch_makes_one_running_clone_per_student(klass, version, instructor, fake_hv):
    clones = launch_and_run(klass, version, instructor)
    assert sorted(c.student.username for c in clones) == ["carol", "dave"]
    assert {c.status for c in clones} == {CloneStatus.RUNNING}
    for clone in clones:
        names = sorted(clone.vms.values_list("domain_name", flat=True))
        assert names == [f"{prefix()}c{clone.pk}-dc", f"{prefix()}c{clone.pk}-web"]
        assert all(vm.mgmt_port > 0 for vm in clone.vms.all())
        assert clone.vms.get(name="dc").invisible
    assert len(fake_hv.domains) == 4


def test_launching_again_skips_students_who_have_a_clone(klass, version, instructor, fake_hv):
    launch_and_run(klass, version, instructor)
    with pytest.raises(services.CloneNotAllowed, match="already has a clone"):
        services.launch(klass, version, by=instructor, queue=False)


def test_a_class_that_does_not_fit_is_refused_before_anything_is_made(
    klass, instructor, storage, fake_hv
):
    huge = make_version(instructor, storage, name="huge", memory={"web": 4096 * GIB, "dc": GIB})
    with pytest.raises(services.CapacityRefused) as refused:
        services.launch(klass, huge, by=instructor, queue=False)
    message = str(refused.value)
    assert "not enough memory" in message and "2 clone(s)" in message and "TiB" in message
    assert not Clone.objects.exists() and not fake_hv.domains


def test_a_class_without_disk_room_is_refused(klass, version, instructor, settings, fake_hv):
    settings.RUDDERVIRT_CLONE_DISK_ALLOWANCE = 10**18
    with pytest.raises(services.CapacityRefused, match="not enough disk"):
        services.launch(klass, version, by=instructor, queue=False)
    assert not Clone.objects.exists()


def test_another_instructor_cannot_launch_for_the_class(klass, version, other_instructor):
    with pytest.raises(services.CloneNotAllowed, match="instructors"):
        services.launch(klass, version, by=other_instructor, queue=False)


def test_stop_start_and_restart_move_the_status_and_the_vms(klass, version, instructor, fake_hv):
    clone = launch_and_run(klass, version, instructor)[0]
    services.request_action(clone, "stop", user=instructor, queue=False)
    assert Clone.objects.get(pk=clone.pk).status == CloneStatus.STOPPING
    assert execute(clone.pk, "stop").status == CloneStatus.STOPPED
    assert set(clone.vms.values_list("state", flat=True)) == {"shutoff"}
    services.request_action(clone, "start", user=clone.student, queue=False)
    assert execute(clone.pk, "start").status == CloneStatus.RUNNING
    boots = fake_hv.domains[f"{prefix()}c{clone.pk}-web"].boots
    services.request_action(clone, "restart", user=clone.student, queue=False)
    assert execute(clone.pk, "restart").status == CloneStatus.RUNNING
    assert fake_hv.domains[f"{prefix()}c{clone.pk}-web"].boots == boots + 1


def test_a_busy_clone_refuses_a_second_action(klass, version, instructor, fake_hv):
    clone = launch_and_run(klass, version, instructor)[0]
    services.request_action(clone, "stop", user=instructor, queue=False)
    with pytest.raises(services.CloneNotAllowed, match="Stopping"):
        services.request_action(clone, "delete", user=instructor, queue=False)


def test_one_vm_can_be_powered_off_alone(klass, version, instructor, fake_hv):
    clone = launch_and_run(klass, version, instructor)[0]
    services.request_action(clone, "stop", user=clone.student, vm="web", queue=False)
    after = execute(clone.pk, "stop", vm="web")
    assert after.status == CloneStatus.RUNNING  # dc still runs
    assert fake_hv.state(f"{prefix()}c{clone.pk}-web") is DomainState.SHUTOFF
    assert fake_hv.state(f"{prefix()}c{clone.pk}-dc") is DomainState.RUNNING
    services.request_action(clone, "start", user=clone.student, vm="web", queue=False)
    assert execute(clone.pk, "start", vm="web").status == CloneStatus.RUNNING
    assert fake_hv.state(f"{prefix()}c{clone.pk}-web") is DomainState.RUNNING


def test_students_cannot_reprovision_delete_or_power_invisible_vms(
    klass, version, instructor, fake_hv
):
    clone = launch_and_run(klass, version, instructor)[0]
    for action in ("reprovision", "delete"):
        with pytest.raises(services.CloneNotAllowed):
            services.request_action(clone, action, user=clone.student, queue=False)
    with pytest.raises(services.CloneNotAllowed, match="not yours"):
        services.request_action(clone, "stop", user=clone.student, vm="dc", queue=False)


def test_an_expired_clone_cannot_be_started_by_its_student(klass, version, instructor, fake_hv):
    from django.utils import timezone

    clone = launch_and_run(klass, version, instructor)[0]
    services.request_action(clone, "stop", user=instructor, queue=False)
    execute(clone.pk, "stop")
    Clone.objects.filter(pk=clone.pk).update(expires_at=timezone.now())
    clone.refresh_from_db()
    with pytest.raises(services.CloneNotAllowed, match="expired"):
        services.request_action(clone, "start", user=clone.student, queue=False)
    services.request_action(clone, "start", user=instructor, queue=False)  # instructors may


def test_reprovision_keeps_names_macs_and_ports(klass, version, instructor, fake_hv):
    clone = launch_and_run(klass, version, instructor)[0]
    before = {vm.name: (vm.domain_name, vm.mgmt_port, vm.nics) for vm in clone.vms.all()}
    disk = clone.vms.get(name="web").disks[0]
    with open(disk, "ab") as f:  # the student's changes
        f.write(b"\0" * 4096)
    services.request_action(clone, "reprovision", user=instructor, queue=False)
    after_clone = execute(clone.pk, "reprovision")
    assert after_clone.status == CloneStatus.RUNNING and after_clone.reprovisions == 1
    after = {vm.name: (vm.domain_name, vm.mgmt_port, vm.nics) for vm in after_clone.vms.all()}
    assert after == before


def test_delete_removes_the_clone_and_everything_on_the_host(klass, version, instructor, fake_hv):
    clone = launch_and_run(klass, version, instructor)[0]
    folder = clone.storage_path
    services.request_action(clone, "delete", user=instructor, queue=False)
    assert execute(clone.pk, "delete") is None
    assert not Clone.objects.filter(pk=clone.pk).exists()
    assert not CloneVM.objects.filter(clone_id=clone.pk).exists()
    assert not [d for d in fake_hv.domains if d.startswith(f"{prefix()}c{clone.pk}-")]
    assert not [n for n in fake_hv.networks if n.startswith(f"{prefix()}c{clone.pk}-")]
    import os

    assert not os.path.exists(folder)


def test_a_clone_whose_version_record_cannot_be_read_can_still_be_deleted(
    klass, version, instructor, fake_hv
):
    """A version the record migration could not convert (spec null) cannot be cloned again,
    but its existing clones must still go, with everything they have on the host."""
    from builds.models import ModuleVersion

    clone = launch_and_run(klass, version, instructor)[0]
    ModuleVersion.objects.filter(pk=version.pk).update(spec=None)
    clone = Clone.objects.get(pk=clone.pk)
    services.request_action(clone, "delete", user=instructor, queue=False)
    assert execute(clone.pk, "delete") is None
    assert not [d for d in fake_hv.domains if d.startswith(f"{prefix()}c{clone.pk}-")]
    assert not [n for n in fake_hv.networks if n.startswith(f"{prefix()}c{clone.pk}-")]


def test_templates_in_use_are_protected(klass, version, instructor, fake_hv):
    from django.db.models import ProtectedError

    launch_and_run(klass, version, instructor)
    assert services.version_in_use(version)
    with pytest.raises(ProtectedError):
        version.delete()


def test_a_failing_hypervisor_marks_the_clone_failed_with_the_reason(
    klass, version, instructor, fake_hv, monkeypatch
):
    from ruddervirt.hypervisor.driver import HypervisorError

    def refuse(name):
        raise HypervisorError(f"start {name!r}: cannot allocate memory")

    monkeypatch.setattr(fake_hv, "start_paused", refuse)
    clones = launch_and_run(klass, version, instructor)
    assert {c.status for c in clones} == {CloneStatus.FAILED}
    assert "cannot allocate memory" in clones[0].error
    assert not fake_hv.domains and not fake_hv.networks  # nothing half-made stays


def test_a_clone_that_fails_to_start_later_keeps_its_disks_and_says_why(
    klass, version, instructor, fake_hv, monkeypatch
):
    from ruddervirt.hypervisor.driver import HypervisorError

    clone = launch_and_run(klass, version, instructor)[0]
    services.request_action(clone, "stop", user=instructor, queue=False)
    execute(clone.pk, "stop")

    def refuse(name):
        raise HypervisorError(f"start {name!r}: cannot allocate memory")

    monkeypatch.setattr(fake_hv, "start", refuse)
    services.request_action(clone, "start", user=clone.student, queue=False)
    after = execute(clone.pk, "start")
    assert after.status == CloneStatus.FAILED and "cannot allocate memory" in after.error
    # Made but not running: a start or a reprovision can retry, a delete removes it.
    assert all(fake_hv.state(vm.domain_name) is DomainState.SHUTOFF for vm in after.vms.all())


def test_a_clone_that_cannot_be_made_leaves_nothing_behind(
    klass, version, instructor, fake_hv, monkeypatch
):
    from ruddervirt.hypervisor.driver import HypervisorError

    def refuse(spec):
        raise HypervisorError(f"define {spec.name!r}: disk quota exceeded")

    monkeypatch.setattr(fake_hv, "define", refuse)
    clones = launch_and_run(klass, version, instructor)
    assert {c.status for c in clones} == {CloneStatus.FAILED}
    assert "disk quota exceeded" in clones[0].error
    assert not fake_hv.domains and not fake_hv.networks
    import os

    assert not any(os.path.exists(c.storage_path) for c in clones)


def test_console_activity_is_recorded_at_most_every_few_seconds(
    klass, version, instructor, fake_hv
):
    clone = launch_and_run(klass, version, instructor)[0]
    Clone.objects.filter(pk=clone.pk).update(last_activity_at=None)
    services.note_console_activity(clone.pk)
    first = Clone.objects.get(pk=clone.pk).last_activity_at
    services.note_console_activity(clone.pk)
    assert first is not None and Clone.objects.get(pk=clone.pk).last_activity_at == first


def test_a_job_that_cannot_be_queued_fails_the_clone_with_the_reason(
    klass, version, instructor, monkeypatch
):
    import django_rq

    def broken(_name):
        raise ConnectionError("Redis is not answering")

    monkeypatch.setattr(django_rq, "get_queue", broken)
    made = services.launch(klass, version, by=instructor)  # queued after commit
    clone = Clone.objects.get(pk=made[0].pk)
    assert clone.status == CloneStatus.FAILED
    assert "could not queue the provision: Redis is not answering" in clone.error
