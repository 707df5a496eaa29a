"""FakeHypervisor behaves like the libvirt driver (same errors, same state moves)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ruddervirt.hypervisor.driver import (
    ConsoleAddress,
    DomainInfo,
    DomainNotFound,
    DomainState,
    HypervisorError,
    InvalidState,
    NetworkInfo,
    NetworkNotFound,
    ShutdownVia,
    WaitCancelled,
    WaitTimedOut,
)
from ruddervirt.hypervisor.fake import FAKE_SCREENSHOT, FakeHypervisor
from ruddervirt.hypervisor.specs import DomainSpec, NetworkSpec, NicSpec

MIB = 1024 * 1024
NET = NetworkSpec(name="rv-lan", bridge="rvbr-lan", metadata={"kind": "build"})


def domain(name: str = "rv-web", **overrides: object) -> DomainSpec:
    values: dict[str, object] = {
        "name": name,
        "vcpus": 1,
        "memory_bytes": 256 * MIB,
        "domain_type": "qemu",
        "metadata": {"kind": "build", "build_id": "1"},
    }
    values.update(overrides)
    return DomainSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeHypervisor:
    return FakeHypervisor()


@pytest.fixture
def running(fake: FakeHypervisor) -> FakeHypervisor:
    fake.define(domain())
    fake.start("rv-web")
    return fake


def test_defined_domain_is_shut_off_and_start_makes_it_running(fake: FakeHypervisor) -> None:
    fake.define(domain())
    assert fake.state("rv-web") is DomainState.SHUTOFF
    fake.start("rv-web")
    assert fake.state("rv-web") is DomainState.RUNNING
    fake.start("rv-web")  # already running: no-op
    assert fake.domains["rv-web"].boots == 1


def test_acpi_shutdown_powers_off(running: FakeHypervisor) -> None:
    running.shutdown("rv-web")
    assert running.wait_for_state("rv-web", {DomainState.SHUTOFF}, timeout=1) is DomainState.SHUTOFF


def test_guest_ignoring_acpi_stays_running_until_destroyed(running: FakeHypervisor) -> None:
    running.acpi_ignored.add("rv-web")
    running.shutdown("rv-web")
    with pytest.raises(WaitTimedOut, match="still running"):
        running.wait_for_state("rv-web", {DomainState.SHUTOFF}, timeout=0.05)
    running.destroy("rv-web")
    assert running.state("rv-web") is DomainState.SHUTOFF
    running.destroy("rv-web")  # already off: no error


def test_shutdown_says_it_used_acpi_when_no_agent_answers(running: FakeHypervisor) -> None:
    assert running.agent_ping("rv-web", 1) is False
    assert running.shutdown("rv-web") is ShutdownVia.ACPI
    assert running.state("rv-web") is DomainState.SHUTOFF


def test_shutdown_goes_through_an_answering_agent_even_when_acpi_is_ignored(
    running: FakeHypervisor,
) -> None:
    running.acpi_ignored.add("rv-web")
    running.agents.add("rv-web")
    assert running.agent_ping("rv-web", 1) is True
    assert running.shutdown("rv-web") is ShutdownVia.AGENT
    assert running.state("rv-web") is DomainState.SHUTOFF


def test_an_agent_answers_only_while_its_domain_runs(running: FakeHypervisor) -> None:
    running.agents.add("rv-web")
    running.destroy("rv-web")
    assert running.agent_ping("rv-web", 1) is False
    assert running.shutdown("rv-web") is ShutdownVia.NOTHING
    with pytest.raises(DomainNotFound):
        running.agent_ping("rv-gone", 1)


def test_fsfreeze_freezes_through_an_answering_agent_and_is_none_without_one(
    running: FakeHypervisor,
) -> None:
    assert running.fsfreeze("rv-web", 1) is None
    running.agents.add("rv-web")
    assert running.fsfreeze("rv-web", 1) == 1
    assert running.frozen == {"rv-web"}


def test_wait_for_state_can_be_cancelled(running: FakeHypervisor) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(WaitCancelled):
        running.wait_for_state("rv-web", {DomainState.SHUTOFF}, timeout=5, cancel=cancel.is_set)


def test_wait_for_state_sees_a_change_made_by_another_thread(running: FakeHypervisor) -> None:
    timer = threading.Timer(0.05, running.set_state, ("rv-web", DomainState.CRASHED))
    timer.start()
    started = time.monotonic()
    wanted = {DomainState.SHUTOFF, DomainState.CRASHED}
    assert running.wait_for_state("rv-web", wanted, timeout=5) is DomainState.CRASHED
    assert time.monotonic() - started < 2


def test_waiting_for_a_domain_that_vanishes_raises_not_found(fake: FakeHypervisor) -> None:
    with pytest.raises(DomainNotFound):
        fake.wait_for_state("rv-ghost", {DomainState.RUNNING}, timeout=1)
    assert fake.wait_for_state("rv-ghost", {DomainState.ABSENT}, timeout=1) is DomainState.ABSENT


def test_unknown_domain_raises_not_found_but_state_says_absent(fake: FakeHypervisor) -> None:
    assert fake.state("rv-ghost") is DomainState.ABSENT
    for call in (fake.start, fake.shutdown, fake.destroy, fake.console_address):
        with pytest.raises(DomainNotFound):
            call("rv-ghost")
    fake.undefine("rv-ghost")  # absent: no error


def test_running_domain_can_be_neither_redefined_nor_undefined(running: FakeHypervisor) -> None:
    with pytest.raises(InvalidState):
        running.define(domain(vcpus=2))
    with pytest.raises(InvalidState):
        running.undefine("rv-web")
    running.destroy("rv-web")
    running.define(domain(vcpus=2))
    assert running.domains["rv-web"].spec.vcpus == 2
    running.undefine("rv-web")
    assert running.state("rv-web") is DomainState.ABSENT


def test_names_without_the_prefix_are_refused(fake: FakeHypervisor) -> None:
    with pytest.raises(ValueError, match="prefix"):
        fake.define(domain("web"))
    with pytest.raises(ValueError, match="prefix"):
        fake.destroy_network("default")


def test_start_fails_while_a_nic_network_is_not_active(fake: FakeHypervisor) -> None:
    nic = NicSpec(mac="52:54:00:00:00:01", network="rv-lan")
    fake.define(domain(nics=[nic]))
    with pytest.raises(HypervisorError, match="not active"):
        fake.start("rv-web")
    fake.define_network(NET)
    fake.start_network("rv-lan")
    fake.start("rv-web")
    assert fake.state("rv-web") is DomainState.RUNNING


def test_console_address_needs_a_running_domain(fake: FakeHypervisor) -> None:
    fake.define(domain())
    with pytest.raises(InvalidState):
        fake.console_address("rv-web")
    fake.start("rv-web")
    address = fake.console_address("rv-web")
    assert address.host == "127.0.0.1"
    assert address.port is not None and address.port >= 5900


def test_console_address_of_a_unix_socket_domain(fake: FakeHypervisor) -> None:
    fake.define(domain(vnc=Path("/run/rv/web.sock")))
    fake.start("rv-web")
    assert fake.console_address("rv-web") == ConsoleAddress(socket=Path("/run/rv/web.sock"))


def test_sent_keys_are_recorded_in_order(running: FakeHypervisor) -> None:
    running.send_keys("rv-web", [29, 56, 111], hold_ms=100)  # ctrl-alt-del
    running.send_keys("rv-web", [28])
    assert running.sent_keys["rv-web"] == [((29, 56, 111), 100), ((28,), 0)]


def test_send_keys_limits_and_needs_a_running_domain(running: FakeHypervisor) -> None:
    with pytest.raises(ValueError):
        running.send_keys("rv-web", list(range(1, 18)))
    with pytest.raises(ValueError):
        running.send_keys("rv-web", [])
    running.destroy("rv-web")
    with pytest.raises(InvalidState):
        running.send_keys("rv-web", [28])


def test_screenshot_of_running_domain(running: FakeHypervisor) -> None:
    assert running.screenshot("rv-web") == FAKE_SCREENSHOT


def test_list_domains_filters_by_prefix_and_carries_metadata(fake: FakeHypervisor) -> None:
    fake.define(domain("rv-b1-web"))
    fake.define(domain("rv-b2-web"))
    fake.start("rv-b1-web")
    assert fake.list_domains("rv-b1-") == [
        DomainInfo("rv-b1-web", DomainState.RUNNING, {"kind": "build", "build_id": "1"})
    ]
    assert [d.name for d in fake.list_domains("rv-")] == ["rv-b1-web", "rv-b2-web"]


def test_network_lifecycle(fake: FakeHypervisor) -> None:
    assert not fake.network_exists("rv-lan")
    fake.define_network(NET)
    assert fake.network_exists("rv-lan")
    fake.start_network("rv-lan")
    fake.start_network("rv-lan")  # already active: no-op
    assert fake.list_networks("rv-") == [NetworkInfo("rv-lan", True, "rvbr-lan", {"kind": "build"})]
    with pytest.raises(InvalidState):
        fake.define_network(NET)
    with pytest.raises(InvalidState):
        fake.undefine_network("rv-lan")
    fake.destroy_network("rv-lan")
    fake.destroy_network("rv-lan")  # already inactive: no error
    fake.undefine_network("rv-lan")
    fake.undefine_network("rv-lan")  # absent: no error
    assert fake.list_networks("rv-") == []
    with pytest.raises(NetworkNotFound):
        fake.start_network("rv-lan")


def test_calls_are_recorded_for_assertions(running: FakeHypervisor) -> None:
    running.shutdown("rv-web")
    assert running.calls == [("define", "rv-web"), ("start", "rv-web"), ("shutdown", "rv-web")]
