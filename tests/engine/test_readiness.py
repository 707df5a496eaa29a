"""The readiness probe: the guest agent first, the SSH banner on the management port for
guests without one (real loopback sockets, a stand-in hypervisor)."""

from __future__ import annotations

from ruddervirt.engine.readiness import AGENT, SSH, ProbeTarget, is_ssh_banner, probe_all
from ruddervirt.hypervisor.driver import DomainNotFound
from tests.loopback import SSH_BANNER, greeting_server


class Agents:
    """Only what the probe asks of a hypervisor: agent_ping. `answering` have an agent."""

    def __init__(self, *answering: str) -> None:
        self.answering = set(answering)
        self.pinged: list[str] = []

    def agent_ping(self, name: str, timeout_s: float) -> bool:
        self.pinged.append(name)
        if name == "rv-gone":
            raise DomainNotFound(f"domain {name!r}: no such domain")
        return name in self.answering


def test_an_answering_agent_makes_a_vm_ready_without_looking_at_ssh() -> None:
    answers = probe_all(Agents("rv-c1-web"), [ProbeTarget("rv-c1-web", 0)], clock=lambda: 42.0)
    assert answers["rv-c1-web"].via == AGENT and answers["rv-c1-web"].at == 42.0


def test_a_guest_without_agent_is_ready_once_its_ssh_server_sends_a_banner() -> None:
    with (
        greeting_server(SSH_BANNER) as up,
        greeting_server(None) as silent,
        greeting_server(b"220 ftp\r\n") as ftp,
    ):
        targets = [
            ProbeTarget("rv-up", up),
            ProbeTarget("rv-down", silent),
            ProbeTarget("rv-ftp", ftp),
        ]
        answers = probe_all(Agents(), targets, timeout=0.3)
    assert {domain: a.via for domain, a in answers.items()} == {"rv-up": SSH}


def test_a_domain_gone_or_without_port_is_simply_not_ready() -> None:
    hv = Agents()
    assert probe_all(hv, [ProbeTarget("rv-gone", 0), ProbeTarget("rv-c1-dc", 0)]) == {}
    assert hv.pinged == ["rv-gone", "rv-c1-dc"]


def test_only_ssh_identification_lines_count_as_a_banner() -> None:
    assert is_ssh_banner("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3")
    assert not is_ssh_banner(None) and not is_ssh_banner("") and not is_ssh_banner("HTTP/1.1")
