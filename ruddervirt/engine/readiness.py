"""Whether a clone VM's guest has booted ("ready"): its qemu-guest-agent answers guest-ping,
or, for guests without an agent, its SSH server sends its banner (``SSH-...``) on the VM's
management port (the loopback forward of its port 22).

Plain Python: the portal (clones.readiness) picks the VMs to probe and records the answers.
One pass asks each VM once, cheaply: agent pings one after the other in the calling thread
(libvirt refuses at once when no agent is connected, and the libvirt driver keeps one
connection per thread, so a pool of threads would open a connection each), then the SSH
banners of the VMs whose agent did not answer all at once, each bounded by ``timeout``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ruddervirt.guest.ssh import read_banner
from ruddervirt.hypervisor.driver import Hypervisor, HypervisorError

AGENT = "agent"
SSH = "ssh"
PROBE_TIMEOUT_S = 1.0  # one agent ping, or one banner read
PROBE_WORKERS = 32  # banner reads at once


@dataclass(frozen=True)
class ProbeTarget:
    """One running VM to ask: its domain and its management port (0: none)."""

    domain: str
    mgmt_port: int


@dataclass(frozen=True)
class Answer:
    """A VM that is ready: how it said so (AGENT or SSH) and when (``clock()`` seconds)."""

    via: str
    at: float


def is_ssh_banner(line: str | None) -> bool:
    """An SSH server's identification line (RFC 4253 4.2) starts with ``SSH-``."""
    return bool(line) and str(line).startswith("SSH-")


def agent_answers(hv: Hypervisor, domain: str, timeout: float) -> bool:
    """hv.agent_ping, with a domain gone or a hypervisor error counting as "no answer"."""
    try:
        return hv.agent_ping(domain, timeout)
    except HypervisorError:
        return False


def probe_all(
    hv: Hypervisor,
    targets: Sequence[ProbeTarget],
    *,
    timeout: float = PROBE_TIMEOUT_S,
    workers: int = PROBE_WORKERS,
    clock: Callable[[], float] = time.time,
) -> dict[str, Answer]:
    """Ask every target once (see the module docstring); the ready ones, by domain. Never
    raises for a guest that is not up; takes about the agent pings plus one ``timeout``."""
    ready: dict[str, Answer] = {}
    for target in targets:
        if agent_answers(hv, target.domain, timeout):
            ready[target.domain] = Answer(AGENT, clock())
    by_ssh = [t for t in targets if t.domain not in ready and t.mgmt_port]
    if not by_ssh:
        return ready

    def banner(target: ProbeTarget) -> Answer | None:
        line = read_banner(target.mgmt_port, timeout=timeout)
        return Answer(SSH, clock()) if is_ssh_banner(line) else None

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(by_ssh)))) as pool:
        for target, answer in zip(by_ssh, pool.map(banner, by_ssh), strict=True):
            if answer is not None:
                ready[target.domain] = answer
    return ready
