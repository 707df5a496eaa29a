"""The per-router lock of the gateways, and its file going with the router (no namespaces are
made here: the commands are replaced)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ruddervirt.hypervisor import gateway
from tests.hypervisor.test_hv_gateway import spec

WAIT_S = 5.0


def enter(runtime_dir: Path, inside: threading.Event, leave: threading.Event) -> threading.Thread:
    """A thread that takes the lock, says so, and holds it until `leave`."""

    def body() -> None:
        with gateway._locked(runtime_dir, "rvr-x"):
            inside.set()
            leave.wait(WAIT_S)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_a_lock_file_its_holder_removed_still_lets_one_holder_in_at_a_time(tmp_path):
    waiting_in, waiting_out = threading.Event(), threading.Event()
    newcomer_in, newcomer_out = threading.Event(), threading.Event()
    with gateway._locked(tmp_path, "rvr-x") as held:
        held.remove = True  # as stop() does with the router's last subnet
        waiting = enter(tmp_path, waiting_in, waiting_out)  # blocks on the file removed below
        assert not waiting_in.wait(0.2)
    assert waiting_in.wait(WAIT_S)  # it woke up on the removed file and locked the path again
    assert (tmp_path / "rvr-x.lock").exists()

    newcomer = enter(tmp_path, newcomer_in, newcomer_out)  # opens the file at the path

    assert not newcomer_in.wait(0.3)  # the same file: it waits for the first waiter
    waiting_out.set()
    assert newcomer_in.wait(WAIT_S)
    newcomer_out.set()
    waiting.join(WAIT_S)
    newcomer.join(WAIT_S)


@pytest.fixture
def namespaces(monkeypatch) -> set[str]:
    """The router namespaces that "exist"; the gateway's commands only change this set."""
    existing = {gateway.names_for(spec()).netns}
    subnets = {"s1"}
    monkeypatch.setattr(gateway, "_netns_exists", lambda netns: netns in existing)
    monkeypatch.setattr(gateway, "_subnets_in", lambda netns: sorted(subnets))
    monkeypatch.setattr(gateway, "_stop_subnet", lambda names, folder: subnets.discard("s1"))
    monkeypatch.setattr(
        gateway, "_remove_router", lambda names, runtime_dir: existing.discard(names.netns)
    )
    return subnets


def test_the_lock_file_goes_with_the_routers_last_subnet(tmp_path, namespaces):
    lock = tmp_path / f"{gateway.names_for(spec()).netns}.lock"

    gateway.stop(spec(), runtime_dir=tmp_path)

    assert not lock.exists()


def test_the_lock_file_stays_while_the_router_has_other_subnets(tmp_path, namespaces):
    namespaces.add("s2")
    lock = tmp_path / f"{gateway.names_for(spec()).netns}.lock"

    gateway.stop(spec(), runtime_dir=tmp_path)

    assert lock.exists()
