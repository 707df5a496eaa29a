"""Clone VM readiness: who is probed, what is recorded, and when it starts over (fake VMs;
the SSH banner comes from a real loopback server)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils import timezone

from clones import readiness, services
from clones.models import Clone, CloneVM
from clones.runner import execute, run_inline
from ruddervirt.engine.readiness import Answer
from ruddervirt.hypervisor.driver import DomainState
from tests.helpers import client_for
from tests.loopback import SSH_BANNER, greeting_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def clone(klass, version, instructor, fake_hv) -> Clone:
    made = services.launch(klass, version, by=instructor, queue=False)
    run_inline([c.pk for c in made], "provision")
    return Clone.objects.get(pk=made[0].pk)


def vm(clone: Clone, name: str) -> CloneVM:
    return clone.vms.get(name=name)


def test_a_fresh_clone_has_started_vms_that_are_booting(clone):
    for one in clone.vms.all():
        assert one.started_at is not None and one.ready_at is None
        assert readiness.ready_text(one) == "booting"
    assert set(readiness.pending([clone.pk])) == set(clone.vms.all())


def test_a_vm_whose_agent_answers_is_ready_with_the_seconds_since_its_start(clone, fake_hv):
    web = vm(clone, "web")
    CloneVM.objects.filter(pk=web.pk).update(started_at=timezone.now() - timedelta(seconds=5))
    fake_hv.agents.add(web.domain_name)
    lines = readiness.probe_pass(fake_hv, timeout=0.2)
    web = vm(clone, "web")
    assert web.ready_via == "agent" and 5 <= web.ready_s < 7
    assert lines == [f"clone {clone.pk} VM web: ready in {web.ready_s:.1f}s (agent)"]
    assert vm(clone, "dc").ready_at is None  # no agent, nothing on its SSH port
    assert list(readiness.pending([clone.pk])) == [vm(clone, "dc")]


def test_a_vm_without_agent_is_ready_when_its_ssh_banner_comes(clone, fake_hv):
    with greeting_server(SSH_BANNER) as port:
        CloneVM.objects.filter(clone=clone, name="dc").update(mgmt_port=port)
        readiness.probe_pass(fake_hv, timeout=0.5)
    dc = vm(clone, "dc")
    assert dc.ready_via == "ssh" and dc.ready_s is not None and dc.ready_s < 5
    assert readiness.ready_text(dc) == f"ready in {dc.ready_s:.1f}s (ssh)"


def test_stop_clears_readiness_and_start_begins_a_new_boot(clone, instructor, fake_hv):
    fake_hv.agents.add(vm(clone, "web").domain_name)
    readiness.probe_pass(fake_hv, timeout=0.2)
    first = vm(clone, "web")
    assert first.ready_at is not None
    services.request_action(clone, "stop", user=instructor, queue=False)
    execute(clone.pk, "stop")
    stopped = vm(clone, "web")
    assert (stopped.started_at, stopped.ready_at, stopped.ready_s, stopped.ready_via) == (
        None, None, None, ""
    )  # fmt: skip
    assert readiness.probe_pass(fake_hv) == []  # a Stopped clone is not probed
    services.request_action(clone, "start", user=instructor, queue=False)
    execute(clone.pk, "start")
    again = vm(clone, "web")
    assert again.started_at > first.started_at and again.ready_at is None


def test_restart_of_one_vm_starts_only_its_readiness_over(clone, instructor, fake_hv):
    fake_hv.agents.update(v.domain_name for v in clone.vms.all())
    readiness.probe_pass(fake_hv, timeout=0.2)
    dc_before = vm(clone, "dc")
    services.request_action(clone, "restart", user=instructor, vm="web", queue=False)
    execute(clone.pk, "restart", vm="web")
    assert vm(clone, "web").ready_at is None
    assert vm(clone, "dc").ready_at == dc_before.ready_at


def test_an_answer_from_an_earlier_boot_is_not_recorded_for_the_next(clone):
    seen = vm(clone, "web")  # read by a probe pass, then the VM is restarted
    CloneVM.objects.filter(pk=seen.pk).update(started_at=seen.started_at + timedelta(seconds=30))
    assert not readiness.record_ready(seen, Answer("ssh", timezone.now().timestamp()))
    assert vm(clone, "web").ready_at is None


def test_the_summary_gives_each_vm_its_readiness(clone, fake_hv):
    fake_hv.agents.add(vm(clone, "web").domain_name)
    readiness.probe_pass(fake_hv, timeout=0.2)
    vms = {v["name"]: v for v in services.clone_summary(clone)["vms"]}
    assert vms["web"]["ready"] is True and vms["web"]["ready_via"] == "agent"
    assert isinstance(vms["web"]["ready_s"], float)
    assert vms["dc"]["ready"] is False and vms["dc"]["ready_s"] is None
    assert vms["dc"]["ready_text"] == "booting"


def test_wait_ready_returns_the_vms_still_booting_at_its_timeout(clone, fake_hv):
    fake_hv.agents.add(vm(clone, "web").domain_name)
    left = readiness.wait_ready([clone.pk], fake_hv, timeout=0.3, interval=0.1)
    assert [v.name for v in left] == ["dc"]
    fake_hv.agents.add(vm(clone, "dc").domain_name)
    assert readiness.wait_ready([clone.pk], fake_hv, timeout=5, interval=0.1) == []


def test_wait_ready_stops_waiting_for_a_vm_whose_domain_qemu_paused_and_says_why(clone, fake_hv):
    fake_hv.agents.add(vm(clone, "web").domain_name)
    dc = vm(clone, "dc").domain_name
    reason = "KVM internal error. Suberror: 1 / emulation failure"
    fake_hv.fail(dc, DomainState.CRASHED, "paused: the guest crashed", reason)
    heard = []
    started = time.monotonic()
    left = readiness.wait_ready(
        [clone.pk], fake_hv, timeout=60, interval=0.1, on_fault=lambda v, f: heard.append((v, f))
    )
    assert time.monotonic() - started < 5  # not the whole timeout
    assert [v.name for v in left] == ["dc"]
    assert [(v.name, f.describe()) for v, f in heard] == [
        ("dc", f"paused: the guest crashed; QEMU says: {reason}")
    ]


def test_the_dashboard_and_the_clone_page_show_each_vm_ready_or_booting(clone, instructor, fake_hv):
    fake_hv.agents.add(vm(clone, "web").domain_name)
    readiness.probe_pass(fake_hv, timeout=0.2)
    took = f"ready in {vm(clone, 'web').ready_s:.1f}s (agent)"
    for url in (f"/clones/classes/{clone.klass_id}/", f"/clones/{clone.pk}/"):
        page = client_for(instructor).get(url).content.decode()
        assert took in page and "booting" in page, url
    status = client_for(instructor).get(f"/clones/classes/{clone.klass_id}/status.json").json()
    [shown] = [c for c in status["clones"] if c["id"] == clone.pk]
    assert [v["ready_text"] for v in shown["vms"]] == [took, "booting"]
