"""A build VM whose domain pauses on an error, crashes or shuts off while the engine waits for
SSH fails at once with QEMU's reason (engine/domainwatch.py), not after its SSH timeout."""

from __future__ import annotations

import threading
import time

import pytest

from ruddervirt.engine.domainwatch import DomainWatch
from ruddervirt.engine.errors import BuildCancelled, BuildError
from ruddervirt.guest import fake
from ruddervirt.hypervisor.driver import DomainState, HypervisorError
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.specs import DomainSpec
from tests.engine.buildkit import PREFIX, FakeBuild, manifest_text, vm_yaml

SHELL = '      - type: shell\n        shell: {inline: "echo hi"}\n'
LONG_WAIT = "    communicator: {sshTimeout: 10m}\n"
KVM_LOG = "KVM internal error. Suberror: 1 / emulation failure"


@pytest.fixture
def build(tmp_path) -> FakeBuild:
    return FakeBuild(tmp_path)


def once_running(build: FakeBuild, act) -> None:
    """Call ``act(domain)`` as soon as the web VM's domain runs (in a thread)."""

    def wait_then_act() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if build.hv.state(build.domain()) is DomainState.RUNNING:
                time.sleep(0.2)  # the engine is waiting for SSH by now
                act(build.domain())
                return
            time.sleep(0.02)

    threading.Thread(target=wait_then_act, daemon=True).start()


def test_a_domain_paused_by_an_emulation_failure_fails_the_ssh_wait_at_once_with_qemus_reason(
    build,
) -> None:
    build.script("web", fake.never_answers(), bare=True)
    once_running(
        build, lambda d: build.hv.fail(d, DomainState.CRASHED, "paused: the guest crashed", KVM_LOG)
    )
    started = time.monotonic()
    with pytest.raises(BuildError) as failed:
        build.run(manifest_text(vm_yaml("web", SHELL, extra=LONG_WAIT)))
    assert time.monotonic() - started < 5  # not the 10 minutes of its sshTimeout
    assert str(failed.value) == (
        "VM web: the domain stopped while waiting for SSH: paused: the guest crashed; "
        f"QEMU says: {KVM_LOG}"
    )
    assert build.hv.domains == {}


def test_a_domain_paused_after_an_io_error_fails_the_ssh_wait(build) -> None:
    build.script("web", fake.never_answers(), bare=True)
    once_running(build, lambda d: build.hv.fail(d, DomainState.PAUSED, "paused after an I/O error"))
    with pytest.raises(BuildError, match=r"waiting for SSH: paused after an I/O error$"):
        build.run(manifest_text(vm_yaml("web", SHELL, extra=LONG_WAIT)))


def test_a_guest_that_shuts_off_while_waiting_for_ssh_fails_at_once(build) -> None:
    build.script("web", fake.never_answers(), bare=True)
    once_running(build, lambda d: build.hv.set_state(d, DomainState.SHUTOFF))
    with pytest.raises(BuildError, match=r"while waiting for SSH: shut off$"):
        build.run(manifest_text(vm_yaml("web", SHELL, extra=LONG_WAIT)))


def test_a_cancel_while_the_domain_is_watched_is_still_a_cancel(build) -> None:
    build.script("web", fake.never_answers(), bare=True)

    def cancel() -> None:
        build.reporter.cancel_reason = "cancelled by alice"

    threading.Timer(0.3, cancel).start()
    with pytest.raises(BuildCancelled, match="cancelled by alice"):
        build.run(manifest_text(vm_yaml("web", SHELL, extra=LONG_WAIT)))


# --- the watch and the fake's faults, alone -------------------------------------------------
def fake_domain(hv: FakeHypervisor, name: str = f"{PREFIX}w") -> str:
    hv.define(DomainSpec(name=name, vcpus=1, memory_bytes=2**26, domain_type="qemu"))
    return name


def test_the_fake_says_a_running_or_deliberately_paused_domain_has_no_fault() -> None:
    hv = FakeHypervisor(name_prefix=PREFIX)
    name = fake_domain(hv)
    assert hv.fault(name) is not None  # defined but shut off
    hv.start_paused(name)
    assert hv.fault(name) is None
    hv.resume(name)
    assert hv.fault(name) is None
    hv.fail(name, DomainState.PAUSED, "paused after an I/O error", "block I/O error")
    assert hv.fault(name).describe() == "paused after an I/O error; QEMU says: block I/O error"
    assert hv.fault(f"{PREFIX}gone").state is DomainState.ABSENT


def test_the_watch_sets_its_event_when_the_callers_cancel_is_set() -> None:
    hv = FakeHypervisor(name_prefix=PREFIX)
    name = fake_domain(hv)
    hv.start(name)
    cancel = threading.Event()
    with DomainWatch(hv, name, cancel, every=0.05) as watch:
        assert not watch.event.wait(0.2)
        cancel.set()
        assert watch.event.wait(2)
    assert watch.fault is None


def test_the_watch_ignores_a_hypervisor_that_does_not_answer_for_a_moment() -> None:
    class Hiccup(FakeHypervisor):
        def fault(self, name):
            raise HypervisorError("cannot connect to qemu:///system")

    hv = Hiccup(name_prefix=PREFIX)
    with DomainWatch(hv, fake_domain(hv), every=0.05) as watch:
        assert not watch.event.wait(0.3)
