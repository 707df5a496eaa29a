"""The clone benchmark's pieces that need no VM: its module and its readiness clock."""

from __future__ import annotations

import time

import pytest

from bench import clone_ready
from bench.clone_bench import Round, markdown, memories
from bench.clone_ready import manifest_text, wait_ready
from ruddervirt.engine.clone import ClonedVM, CloneResult
from ruddervirt.manifest import validate


@pytest.mark.parametrize(("image", "user"), [("tiny", "root"), ("debian", "debian")])
def test_the_module_is_a_valid_one_vm_build_logging_in_as_the_images_user(image, user):
    result = validate(manifest_text(image, "file:///var/tmp/x.qcow2", "ab" * 32, 512))

    assert result.valid, [p.message for p in result.errors]
    [vm] = result.manifest.vms
    assert vm.communicator.ssh_username == user
    assert vm.resources.memory == 512 * 1024 * 1024
    assert vm.cloud_init is not None  # clones get a seed of their own, as a class's do
    assert [n.ip for n in vm.nics] == ["10.10.0.10"]


class AgentAfter:
    """A hypervisor whose guests' agents answer from their n-th ping on (never: None)."""

    def __init__(self, pings_until_up: dict[str, int | None]) -> None:
        self.left = dict(pings_until_up)

    def agent_ping(self, name: str, timeout_s: float) -> bool:
        left = self.left[name]
        if left is None:
            return False
        self.left[name] = left - 1
        return left <= 1


def clone(*domains: str) -> CloneResult:
    vms = tuple(ClonedVM(d, d, (), 0, (), False) for d in domains)  # no mgmt port: agent only
    return CloneResult(vms=vms, networks=())


def test_wait_ready_times_each_vm_from_the_launch_and_names_those_never_ready(monkeypatch):
    monkeypatch.setattr(clone_ready, "POLL_S", 0.01)
    hv = AgentAfter({"a": 1, "b": 3, "never": None})
    launched = time.monotonic()

    ready = wait_ready(hv, [clone("a", "b"), clone("never")], launched, timeout=0.5)

    assert ready.via == {"a": "agent", "b": "agent"}
    assert ready.not_ready == ("never",)
    assert 0 <= ready.ready_s["a"] < 2 * 0.01 <= ready.ready_s["b"] < 0.5
    assert time.monotonic() - launched >= 0.5  # it waited for "never" until the timeout


def test_the_table_gains_readiness_columns_only_when_measured():
    plain = Round("linked", 10, 3.4, 1.2, 2.1, 0.1, 340.0, 200.0, 200.0, 6.0, 0)
    timed = Round(**{**plain.__dict__, "ready_first_s": 50.0, "ready_median_s": 60.5,
                     "ready_last_s": 71.2, "ready_via": "agent"})  # fmt: skip

    assert "ready" not in markdown([plain])
    table = markdown([timed])
    assert "launch → ready" in table.splitlines()[0]
    assert "| 50.0 / 60.5 / 71.2 | agent | 0 |" in table


def test_warm_rounds_are_marked_in_the_mode_column():
    cold = Round("linked", 1, 3.4, 1.2, 2.1, 0.1, 340.0, 200.0, 200.0, 6.0, 0)
    warm = Round(**{**cold.__dict__, "start": "warm"})
    lines = markdown([cold, warm]).splitlines()
    assert lines[2].startswith("| 1 | linked | ") and lines[3].startswith("| 1 | linked, warm | ")


def test_several_images_get_an_image_column_and_the_warm_speedup_per_size():
    cold = Round("linked", 30, 3.4, 1.2, 2.1, 0.1, 340.0, 200.0, 200.0, 6.0, 0,
                 ready_last_s=800.0, ready_via="agent", image="debian")  # fmt: skip
    warm = Round(**{**cold.__dict__, "start": "warm", "ready_last_s": 40.0})
    tiny = Round(**{**cold.__dict__, "image": "tiny", "ready_last_s": 100.0})

    lines = markdown([cold, warm, tiny]).splitlines()

    assert lines[0].startswith("| image | clones | mode |")
    assert lines[3].startswith("| debian | 30 | linked, warm | ")
    assert lines[-1] == "- debian, 30 clones: all ready 40.0 s warm vs 800.0 s cold (20.0x sooner)"
    assert not any("tiny, 30" in line for line in lines)  # no warm round of tiny: no ratio


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {"tiny": 256, "debian": 1024}),
        ("512", {"tiny": 512, "debian": 512}),
        ("debian=640", {"tiny": 256, "debian": 640}),
    ],
)
def test_memory_is_one_size_for_all_or_per_image(text, expected):
    assert memories(text, ["tiny", "debian"]) == expected


@pytest.mark.parametrize("text", ["windows=512", "debian=lots", "debian=32"])
def test_a_bad_memory_argument_says_what_is_wrong(text):
    with pytest.raises(ValueError, match="not"):
        memories(text, ["tiny", "debian"])
