"""A failed VM kept running for inspection (BuildPlan.keep_failed_vm), and a failed build's
checkpoints kept for its resume, on fakes."""

from __future__ import annotations

import pytest

from ruddervirt.engine.cleanup import remove_owned
from ruddervirt.engine.errors import StepFailed
from ruddervirt.engine.stepcache import StepCache
from ruddervirt.guest import fake
from ruddervirt.hypervisor.driver import DomainState
from ruddervirt.hypervisor.fake import FakeHypervisor
from ruddervirt.hypervisor.specs import DomainSpec, NetworkSpec
from tests.engine.buildkit import PREFIX, FakeBuild, manifest_text, vm_yaml


def shell(name: str, inline: str) -> str:
    return f"      - name: {name}\n        type: shell\n        shell: {{inline: {inline!r}}}\n"


FAILING = shell("one", "echo one") + shell("two", "exit 3")


def failing_build(tmp_path, *, keep: bool, use_cache: bool = False) -> FakeBuild:
    build = FakeBuild(tmp_path)
    steps = [fake.run("echo one"), *([fake.run("sync")] if use_cache else [])]
    build.script("web", *steps, fake.run("exit 3", exit_status=3), fails=True)
    with pytest.raises(StepFailed):
        build.run(
            manifest_text(vm_yaml("web", FAILING)),
            keep_failed_vm=keep,
            use_cache=use_cache,
            build_id=1,
        )
    return build


def test_a_failed_vm_asked_to_be_kept_stays_running(tmp_path) -> None:
    build = failing_build(tmp_path, keep=True)
    assert build.hv.state(build.domain("web")) == DomainState.RUNNING
    assert any("keeping the failed VM web running" in line for line in build.reporter.text())


def test_a_failed_vm_not_asked_to_be_kept_is_removed(tmp_path) -> None:
    build = failing_build(tmp_path, keep=False)
    assert build.hv.state(build.domain("web")) == DomainState.ABSENT


def test_only_the_vm_that_failed_is_kept_not_the_one_its_failure_stopped(tmp_path) -> None:
    build = FakeBuild(tmp_path)
    build.script("web", fake.run("exit 3", exit_status=3), fails=True)
    build.script("db", fake.wait(delay=5), fails=True, bare=True)  # stopped while waiting
    text = manifest_text(vm_yaml("web", shell("two", "exit 3")), vm_yaml("db"))
    with pytest.raises(StepFailed):
        build.run(text, keep_failed_vm=True)
    assert build.hv.state(build.domain("web")) == DomainState.RUNNING
    assert build.hv.state(build.domain("db")) == DomainState.ABSENT


def test_a_kept_vm_that_is_no_longer_running_is_removed(tmp_path) -> None:
    build = FakeBuild(tmp_path)

    def crash() -> None:  # the step's command took the guest down
        build.hv.set_state(build.domain("web"), DomainState.SHUTOFF)

    build.script("web", fake.run("exit 3", exit_status=3, then=crash), fails=True)
    with pytest.raises(StepFailed):
        build.run(manifest_text(vm_yaml("web", shell("two", "exit 3"))), keep_failed_vm=True)
    assert build.hv.state(build.domain("web")) == DomainState.ABSENT
    assert any("not running any more" in line for line in build.reporter.text())


def test_remove_owned_keeps_the_kept_domain_and_the_networks_it_needs() -> None:
    hv = FakeHypervisor(name_prefix=PREFIX)
    owner = {"kind": "build", "build": "b7"}
    for vm in ("web", "db"):
        hv.define(
            DomainSpec(
                name=f"{PREFIX}b7-{vm}", vcpus=1, memory_bytes=2**26, domain_type="qemu",
                metadata=owner,
            )
        )  # fmt: skip
    hv.define_network(NetworkSpec(name=f"{PREFIX}b7-lan", bridge="rvtb7lan", metadata=owner))
    removed = remove_owned(hv, PREFIX, owner, keep_domains={f"{PREFIX}b7-web"})
    assert removed == [f"domain {PREFIX}b7-db"]
    assert hv.network_exists(f"{PREFIX}b7-lan")
    remove_owned(hv, PREFIX, owner)
    assert not hv.network_exists(f"{PREFIX}b7-lan")
    assert hv.list_domains(PREFIX) == []


def test_a_failed_build_keeps_its_checkpoints_from_eviction_until_its_lease_goes(
    tmp_path,
) -> None:
    build = failing_build(tmp_path, keep=False, use_cache=True)
    store = StepCache(build.config().step_cache_dir)
    assert [r.step_name for r in store.records()] == ["one"]
    assert store.evict(everything=True) == []  # the failed build's lease holds its key
    assert [r.step_name for r in store.records()] == ["one"]
    store.release("b1")  # its kept disks are removed: the resume window is over
    assert [r.step_name for r in store.evict(everything=True)] == ["one"]
