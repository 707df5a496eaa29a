"""guest-exec through the agent: the command passed as argv, the status polled until it
exits, output decoded and cut, a command that outlives its timeout killed; the fake driver
answers the same way."""

from __future__ import annotations

import base64
import json

import pytest

from ruddervirt.hypervisor import guest_exec
from ruddervirt.hypervisor.driver import ExecResult, HypervisorError
from ruddervirt.hypervisor.fake import FakeHypervisor
from tests.hypervisor.test_hv_fake import domain as domain_spec


class Agent:
    """A scripted qemu-guest-agent: `statuses` are guest-exec-status answers, in turn."""

    def __init__(self, *statuses: dict) -> None:
        self.statuses = list(statuses)
        self.sent: list[dict] = []

    def __call__(self, command: str, timeout: int) -> str:
        request = json.loads(command)
        self.sent.append(request)
        if request["execute"] == "guest-exec":
            return json.dumps({"return": {"pid": 4242}})
        return json.dumps({"return": self.statuses.pop(0) if self.statuses else {"exited": False}})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_command_goes_as_argv_and_its_exit_status_and_output_come_back():
    agent = Agent(
        {"exited": False},
        {"exited": True, "exitcode": 3, "out-data": b64(b"hello\n"), "err-data": b64(b"oops")},
    )
    clock = Clock()
    done = guest_exec.run(
        agent, ["/bin/sh", "-c", "echo hello; exit 3"], timeout_s=10, max_output=100,
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    assert done == ExecResult(exit_code=3, stdout=b"hello\n", stderr=b"oops")
    start = agent.sent[0]
    assert start == {
        "execute": "guest-exec",
        "arguments": {
            "path": "/bin/sh",
            "arg": ["-c", "echo hello; exit 3"],
            "capture-output": True,
        },
    }
    assert agent.sent[1] == {"execute": "guest-exec-status", "arguments": {"pid": 4242}}


def test_output_is_cut_to_the_limit_and_says_so():
    agent = Agent({"exited": True, "exitcode": 0, "out-data": b64(b"x" * 50)})
    done = guest_exec.run(agent, ["/bin/true"], timeout_s=1, max_output=10)
    assert done.stdout == b"x" * 10 and done.truncated


def test_a_command_past_its_timeout_is_killed_and_reported_timed_out():
    agent = Agent()  # never exits
    clock = Clock()
    done = guest_exec.run(
        agent, ["/bin/sleep", "999"], timeout_s=2, max_output=10, clock=clock, sleep=clock.sleep
    )
    assert done.timed_out and done.exit_code is None
    assert 2 <= clock.now < 3
    kill = agent.sent[-1]
    assert kill["arguments"]["path"] == "/bin/kill"
    assert kill["arguments"]["arg"] == ["-KILL", "4242"]


def test_a_garbled_answer_is_a_hypervisor_error():
    with pytest.raises(HypervisorError, match="unexpected answer to guest-exec"):
        guest_exec.run(lambda c, t: "not json", ["/bin/true"], timeout_s=1, max_output=10)


def test_argv_must_be_a_list_of_strings():
    with pytest.raises(ValueError, match="argv"):
        guest_exec.run(Agent(), [], timeout_s=1, max_output=10)


def test_the_fake_runs_through_an_answering_agent_only():
    hv = FakeHypervisor()
    hv.define(domain_spec("rv-web"))
    hv.start("rv-web")
    assert hv.guest_exec("rv-web", ["/bin/true"], timeout_s=1, max_output=5) is None
    hv.agents.add("rv-web")
    hv.guests["rv-web"] = lambda argv: ExecResult(exit_code=0, stdout=b"0123456789")
    done = hv.guest_exec("rv-web", ["/bin/sh", "-c", "ls"], timeout_s=1, max_output=5)
    assert done == ExecResult(exit_code=0, stdout=b"01234", truncated=True)
    assert hv.executed == [("rv-web", ["/bin/sh", "-c", "ls"])]
