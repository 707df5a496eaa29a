"""launch_class and clone_action, run in-process against the fake hypervisor."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clones.models import Class, Clone, CloneStatus
from jobs.models import Operation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_workers(monkeypatch):
    """Whatever runs on this machine's Redis, these commands clone in their own process."""
    monkeypatch.setattr("clones.management.commands.launch_class.workers_listening", lambda q: 0)


def launch(*args: str, stderr: io.StringIO | None = None) -> tuple[int, str]:
    out = io.StringIO()
    try:
        call_command("launch_class", *args, stdout=out, stderr=stderr or io.StringIO())
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue()


def test_launch_class_waits_and_ends_with_json(version, admin_user, fake_hv):
    code, out = launch("--module", "lab@1", "--students", "ann,ben,cy", "--wait", "--json")
    assert code == 0, out
    data = json.loads(out.strip().splitlines()[-1])
    assert Class.objects.get(pk=data["class"]).adhoc
    assert sorted(c["student"] for c in data["clones"]) == ["ann", "ben", "cy"]
    assert {c["status"] for c in data["clones"]} == {"Running"}
    vms = data["clones"][0]["vms"]
    assert [v["name"] for v in vms] == ["web", "dc"] and all(v["ssh_port"] for v in vms)


def test_launch_class_wait_ready_gives_each_vm_its_readiness(
    version, admin_user, fake_hv, monkeypatch
):
    monkeypatch.setattr(fake_hv, "agent_ping", lambda name, timeout_s: True)  # every agent up
    code, out = launch("--module", "lab@1", "--students", "ann,ben", "--wait-ready", "--json")
    assert code == 0, out
    data = json.loads(out.strip().splitlines()[-1])
    assert {c["status"] for c in data["clones"]} == {"Running"}
    for clone in data["clones"]:
        assert [v["name"] for v in clone["vms"]] == ["web", "dc"]
        for vm in clone["vms"]:
            assert vm["domain"].endswith(f"c{clone['id']}-{vm['name']}")
            assert vm["ready"] is True and 0 <= vm["ready_s"] < 30
            assert vm["ready_via"] == "agent"


def test_launch_class_wait_ready_says_which_vms_are_not_ready_at_its_timeout(
    version, admin_user, fake_hv, monkeypatch
):
    monkeypatch.setattr(fake_hv, "agent_ping", lambda name, timeout_s: name.endswith("-web"))
    err = io.StringIO()
    code, out = launch(
        "--module", "lab", "--students", "ann", "--wait-ready", "--ready-timeout", "0.5",
        stderr=err,
    )  # fmt: skip
    assert code == 1
    clone = Clone.objects.get()
    dc = clone.vms.get(name="dc").domain_name
    assert err.getvalue().strip() == f"not ready after 0.5s: clone {clone.pk} VM dc ({dc})"
    assert f"  clone {clone.pk} for ann: Running" in out  # the existing lines, unchanged
    assert "    VM web: ready in " in out and "    VM dc: booting" in out


def test_watch_ready_once_records_the_vms_whose_guest_answered(
    version, admin_user, fake_hv, monkeypatch
):
    launch("--module", "lab", "--students", "ann", "--wait")
    monkeypatch.setattr(fake_hv, "agent_ping", lambda name, timeout_s: name.endswith("-web"))
    out = io.StringIO()
    call_command("watch_ready", "--once", stdout=out)
    clone = Clone.objects.get()
    assert out.getvalue().startswith(f"clone {clone.pk} VM web: ready in ")
    assert clone.vms.get(name="web").ready_via == "agent"
    assert clone.vms.get(name="dc").ready_at is None


def test_launch_class_uses_or_makes_the_named_class(version, admin_user, fake_hv):
    launch("--module", "lab", "--students", "ann", "--class", "Monday")
    code, _ = launch("--module", "lab", "--students", "ben", "--class", "Monday")
    assert code == 0
    monday = Class.objects.get(name="Monday")
    assert not monday.adhoc
    assert sorted(monday.students.values_list("username", flat=True)) == ["ann", "ben"]


def test_launch_class_without_wait_only_queues(version, admin_user, fake_hv, monkeypatch):
    queued = []
    monkeypatch.setattr("jobs.runner.enqueue", queued.append)
    code, _ = launch("--module", "lab", "--students", "ann")
    assert code == 0 and len(queued) == 1
    op = Operation.objects.get(pk=queued[0])
    assert op.kind == "clone.provision" and op.status == "Queued"
    assert Clone.objects.get(pk=op.target_id).status == CloneStatus.PENDING


def test_launch_class_names_an_unknown_module(admin_user):
    with pytest.raises(CommandError, match="'nothing': no such module"):
        call_command("launch_class", "--module", "nothing", "--students", "ann")


def test_launch_class_refuses_a_class_that_does_not_fit(version, admin_user, settings):
    settings.RUDDERVIRT_HOST_MEMORY_RESERVE = 10**15
    with pytest.raises(CommandError, match="refused: not enough memory"):
        call_command("launch_class", "--module", "lab", "--students", "ann,ben")
    assert not Clone.objects.exists()


def test_clone_action_stops_starts_and_deletes(version, admin_user, fake_hv):
    _, out = launch("--module", "lab", "--students", "ann", "--wait", "--json")
    clone_id = json.loads(out.strip().splitlines()[-1])["clones"][0]["id"]
    for action, expected in (("stop", "Stopped"), ("start", "Running"), ("reprovision", "Running")):
        out = io.StringIO()
        call_command("clone_action", str(clone_id), action, stdout=out)
        assert out.getvalue().strip() == f"clone {clone_id}: {expected}"
    out = io.StringIO()
    call_command("clone_action", str(clone_id), "delete", stdout=out)
    assert out.getvalue().strip() == f"clone {clone_id}: deleted"
    assert not fake_hv.domains


def test_launch_class_makes_the_clones_itself_when_the_listening_worker_never_comes(
    version, admin_user, fake_hv, monkeypatch
):
    monkeypatch.setattr("clones.management.commands.launch_class.workers_listening", lambda q: 1)
    monkeypatch.setattr("clones.management.commands.launch_class.UNCLAIMED_S", 0.5)
    monkeypatch.setattr("jobs.runner.enqueue", lambda op_id: None)  # lost
    code, out = launch("--module", "lab", "--students", "ann", "--wait", "--json")
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1])["clones"][0]["status"] == "Running"
