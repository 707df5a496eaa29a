"""Where NAT uplinks end (RUDDERVIRT_UPLINK_NETNS): the machine, or a namespace standing in for
it, and never the machine when the named namespace is missing. No command runs for real here;
tests/e2e/test_internet.py runs the whole path into a stand-in outside."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ruddervirt.hypervisor import gateway, gateway_nat
from ruddervirt.hypervisor.gateway_names import GatewayNames
from ruddervirt.hypervisor.specs import NetworkSpec
from tests.conftest import NO_UPLINK_NETNS

ENV = gateway_nat.UPLINK_NETNS_ENV
NAMES = GatewayNames(netns="rvr-abc", host_veth="rvgabc", inner="sabc", uplink_host="rvuabc")


@pytest.fixture
def netns_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(gateway_nat, "NETNS_DIR", tmp_path)
    return tmp_path


def test_without_the_variable_uplinks_end_on_the_machine() -> None:
    assert gateway_nat.uplink_host({}) is gateway_nat.HOST
    assert gateway_nat.uplink_host({ENV: ""}) is gateway_nat.HOST


def test_a_named_namespace_that_exists_takes_the_machines_part(netns_dir: Path) -> None:
    (netns_dir / "outside-up").touch()
    assert gateway_nat.uplink_host({ENV: "outside-up"}) == gateway_nat.Host("outside-up")


@pytest.mark.parametrize("name", ["missing", "../../etc", "a b", "-n", "x" * 70])
def test_a_missing_or_malformed_namespace_is_refused_instead_of_the_machine(
    netns_dir: Path, name: str
) -> None:
    with pytest.raises(gateway_nat.UplinkError):
        gateway_nat.uplink_host({ENV: name})


def test_the_test_suite_points_uplinks_at_a_namespace_that_never_exists() -> None:
    assert os.environ[ENV] == NO_UPLINK_NETNS
    with pytest.raises(gateway_nat.UplinkError, match="no such network namespace"):
        gateway_nat.uplink_host()


class Recorder:
    """Stands in for ruddervirt.proc.run: records argv, succeeds with empty output."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, argv, *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
        assert timeout > 0
        self.calls.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, b"", b"")


def test_with_a_stand_in_no_uplink_command_runs_on_the_machine(tmp_path: Path, monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(gateway_nat, "run", recorder)
    inside: list[tuple[str, ...]] = []

    def in_netns(netns: str, *args: str) -> str:
        inside.append((netns, *args))
        return ""

    host = gateway_nat.Host("outside-up")
    gateway_nat.ensure_uplink(NAMES, tmp_path, in_netns=in_netns, host=host, resolvers=[])
    assert recorder.calls, "the machine's part of the uplink ran somewhere"
    for argv in recorder.calls:
        assert argv[:4] == ["ip", "netns", "exec", "outside-up"], argv
    made = [argv[4:] for argv in recorder.calls]
    assert ["sysctl", "-qw", "net.ipv4.ip_forward=1"] in made  # the stand-in's, not the host's
    assert any(a[:1] == ["iptables"] and "MASQUERADE" in a for a in made)
    assert {call[0] for call in inside} == {NAMES.netns}
    assert inside[-1][1:4] == ("ip", "route", "add")  # the default route, last as always


def nat_spec() -> NetworkSpec:
    return NetworkSpec(
        name="rvt-b1-lan",
        bridge="rvbrtest1",
        ipv4="10.10.0.1/24",
        router="rvt-b1-vpc-lab",
        nat=True,
    )


def test_a_nat_gateway_whose_uplink_namespace_is_missing_fails_before_making_anything(
    tmp_path: Path, monkeypatch
) -> None:
    recorder = Recorder()
    monkeypatch.setattr(gateway, "run", recorder)
    monkeypatch.setattr(gateway_nat, "run", recorder)
    monkeypatch.setenv(ENV, "rvt-not-there")
    with pytest.raises(gateway.GatewayError, match="no such network namespace"):
        gateway.ensure(nat_spec(), runtime_dir=tmp_path)
    assert recorder.calls == []


def test_a_router_whose_stand_in_is_gone_is_still_removed(tmp_path: Path, monkeypatch) -> None:
    recorder = Recorder()
    monkeypatch.setattr(gateway, "run", recorder)
    monkeypatch.setattr(gateway_nat, "run", recorder)
    monkeypatch.setenv(ENV, "rvt-not-there")
    gateway._remove_router(NAMES, tmp_path)
    assert recorder.calls == [["ip", "netns", "del", NAMES.netns]]
