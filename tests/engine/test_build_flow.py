"""A whole build on fakes: what success returns, how cancel, SSH that never comes, handbuild
steps and shutdown behave, and that nothing is left behind."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ruddervirt.engine.errors import BuildCancelled, BuildError, StepFailed
from ruddervirt.guest import fake
from ruddervirt.hypervisor.driver import ShutdownVia
from ruddervirt.spec.model import CloudInitRecord, CommunicatorRecord
from tests.engine.buildkit import FakeBuild, manifest_text, vm_yaml

SHELL = '      - type: shell\n        shell: {inline: "echo hi"}\n'
HANDBUILD = (
    "      - name: tune\n        type: handbuild\n        handbuild: {instructions: Tune it}\n"
)


@pytest.fixture
def build(tmp_path) -> FakeBuild:
    return FakeBuild(tmp_path)


def test_a_successful_build_returns_the_captured_template_of_each_vm(build) -> None:
    build.script("web", fake.run("echo hi"))
    result = build.run(manifest_text(vm_yaml("web", SHELL)))
    (vm,) = result.spec.vms
    assert (vm.name, vm.cpu, vm.memory, vm.firmware.uefi) == ("web", 1, 256 * 2**20, False)
    (disk,) = vm.disks
    path = result.capture_dir / str(disk.path)
    assert path == result.capture_dir / "web" / "root.qcow2" and path.is_file()
    assert build.images.virtual_size(path, fmt="qcow2") == disk.size == 20 * 2**30
    assert vm.communicator == CommunicatorRecord(ssh_username="root", ssh_port=22, shell="bash")
    assert vm.cloud_init == CloudInitRecord(network_data=None)  # clones get a seed of their own
    assert build.reporter.phases()[-2:] == ["ShuttingDown", "DiskCaptured"]
    build.guests["web"].assert_done()


def test_a_successful_build_leaves_no_domain_or_network_behind(build) -> None:
    build.script("web", fake.run("echo hi"))
    build.run(manifest_text(vm_yaml("web", SHELL)))
    assert build.hv.domains == {} and build.hv.networks == {}


def test_the_build_vm_disk_is_an_overlay_of_its_parent_template(build) -> None:
    build.script("web")
    build.run(manifest_text(vm_yaml("web")))
    disk = build.tmp_path / "work/web/disk0-root.qcow2"
    record = json.loads(disk.read_text())
    assert record["backing"] == str(build.parent("web").resolve())
    assert "disk root: grown from 67108864 to 21474836480 bytes" in build.reporter.text()


def test_the_seed_carries_the_build_key_the_hostname_and_the_instance(build) -> None:
    build.script("web")
    build.run(manifest_text(vm_yaml("web")))
    (seed,) = build.images.seeds.values()
    assert "ruddervirt-build-b1" in seed["user-data"]
    assert "local-hostname: web" in seed["meta-data"]
    assert "instance-id: rvt-b1-web" in seed["meta-data"]


def test_the_guest_is_reached_through_the_vms_own_loopback_forward(build) -> None:
    build.script("web")
    build.run(manifest_text(vm_yaml("web")))
    endpoint = build.endpoints["web"]
    assert (endpoint.host, endpoint.username, endpoint.vm) == ("127.0.0.1", "root", "web")
    assert endpoint.private_key and "OPENSSH PRIVATE KEY" in endpoint.private_key
    assert f"SSH forwarded from 127.0.0.1:{endpoint.port}" in " ".join(build.reporter.text())


GRACEFUL = "    shutdown: graceful\n"


def test_the_build_key_is_removed_and_the_disks_synced_before_a_fast_stop(build) -> None:
    guest = build.script("web")
    build.run(manifest_text(vm_yaml("web")))
    (last,) = [c for c in guest.calls if c.op == "power_off"]
    assert "sed -i '/ ruddervirt-build-b1$/d'" in last.what
    assert last.what.index("ruddervirt-build-b1") < last.what.index("sync")
    assert "poweroff" not in last.what
    domain = build.domain("web")
    assert ("destroy", domain) in build.hv.calls and build.hv.frozen == set()
    assert "stopped the VM once it synced its disks (shutdown: fast)" in build.reporter.text()


def test_a_fast_stop_freezes_the_file_systems_through_the_agent_before_stopping(build) -> None:
    # The guest stays up after the last command (it is not a poweroff).
    guest = build.script("web", fake.wait(), build.generalized(), fake.power_off(), bare=True)
    domain = build.domain("web")
    build.hv.agents.add(domain)
    build.run(manifest_text(vm_yaml("web")))
    (last,) = [c for c in guest.calls if c.op == "power_off"]
    assert last.what.endswith("; sync")  # no poweroff: the agent freezes, then a stop
    assert build.hv.frozen == {domain}
    assert build.hv.calls.index(("fsfreeze", domain)) < build.hv.calls.index(("destroy", domain))
    text = build.reporter.text()
    assert "its guest agent froze 1 filesystem(s) first" in text
    assert "stopped the VM once it froze its file systems (shutdown: fast)" in text


def test_a_graceful_vm_removes_the_build_key_before_it_powers_off(build) -> None:
    guest = build.script("web")
    build.run(manifest_text(vm_yaml("web", extra=GRACEFUL)))
    (poweroff,) = [c for c in guest.calls if c.op == "power_off"]
    assert "sed -i '/ ruddervirt-build-b1$/d'" in poweroff.what
    assert poweroff.what.index("sync") < poweroff.what.index("poweroff")
    assert "the guest powered off" in build.reporter.text()


def test_a_guest_that_stays_up_after_poweroff_gets_the_acpi_button(build) -> None:
    # The domain stays RUNNING after the guest's own poweroff.
    build.script("web", fake.wait(), build.generalized(), fake.power_off(), bare=True)
    build.run(manifest_text(vm_yaml("web", extra=GRACEFUL)))
    text = build.reporter.text()
    assert "the guest did not power off by itself; sending the ACPI power button" in text
    assert "the guest powered off on ACPI" in text


def test_a_guest_that_stays_up_after_poweroff_is_shut_down_by_its_agent_despite_acpi(
    build,
) -> None:
    build.script("web", fake.wait(), build.generalized(), fake.power_off(), bare=True)
    build.hv.agents.add(build.domain("web"))
    build.hv.acpi_ignored.add(build.domain("web"))
    build.run(manifest_text(vm_yaml("web", extra=GRACEFUL)))
    text = build.reporter.text()
    assert "the guest did not power off by itself; asked its guest agent to shut it down" in text
    assert "the guest powered off through its guest agent" in text
    assert not any("ACPI" in line for line in text)


def test_a_guest_that_ignores_its_agents_shutdown_is_frozen_by_it_then_forced_off(
    build,
) -> None:
    build.script("web", fake.wait(), build.generalized(), fake.power_off(), bare=True)
    domain = build.domain("web")
    build.hv.agents.add(domain)
    build.hv.shutdown = lambda name: ShutdownVia.AGENT  # accepted, and nothing happens
    build.run(manifest_text(vm_yaml("web", extra=GRACEFUL)))
    text = build.reporter.text()
    forced = text.index("the guest ignored its guest agent's shutdown; forcing it off")
    assert text[forced + 1] == "its guest agent froze 1 filesystem(s) first"
    assert build.hv.frozen == {domain}
    assert build.hv.calls.index(("fsfreeze", domain)) < build.hv.calls.index(("destroy", domain))


def test_a_guest_without_agent_that_ignores_acpi_is_forced_off_unfrozen_and_says_so(
    build,
) -> None:
    build.script("web", fake.wait(), build.generalized(), fake.power_off(), bare=True)
    build.hv.acpi_ignored.add(build.domain("web"))
    build.run(manifest_text(vm_yaml("web", extra=GRACEFUL)))
    text = build.reporter.text()
    forced = text.index("the guest ignored ACPI; forcing it off")
    assert text[forced + 1] == "no guest agent answers to freeze its filesystems first"
    assert build.hv.frozen == set()


def test_ssh_that_never_comes_fails_the_vm_with_the_domain_state(build) -> None:
    build.script("web", fake.never_answers(), bare=True)
    extra = "    communicator: {sshTimeout: 200ms}\n"
    with pytest.raises(
        BuildError, match=r"VM web: fake guest not ready .*\(domain state: running\)"
    ):
        build.run(manifest_text(vm_yaml("web", SHELL, extra=extra)))
    assert (build.tmp_path / "work/web/console.ppm").exists()  # the screen when SSH gave up
    assert "Failed" in build.reporter.phases()
    assert build.hv.domains == {}


def cancel_later(build: FakeBuild, seconds: float, reason: str = "cancelled by alice") -> None:
    def cancel() -> None:
        build.reporter.cancel_reason = reason

    threading.Timer(seconds, cancel).start()


def test_cancel_during_a_step_stops_the_build_within_a_second(build) -> None:
    build.script(
        "web", fake.run("sleep 600", delay=600), fake.run("rm -f /tmp/rudder-script-"), fails=True
    )
    cancel_later(build, 0.2)
    started = time.monotonic()
    with pytest.raises(BuildCancelled, match="cancelled by alice"):
        build.run(
            manifest_text(
                vm_yaml("web", "      - type: shell\n        shell: {inline: sleep 600}\n")
            )
        )
    assert time.monotonic() - started < 2
    assert build.reporter.finished() == [(0, False, None, "cancelled by alice")]
    assert build.hv.domains == {}


def test_cancel_while_waiting_for_ssh_stops_the_build(build) -> None:
    build.script("web", fake.never_answers(), bare=True)
    cancel_later(build, 0.2)
    with pytest.raises(BuildCancelled, match="cancelled by alice"):
        build.run(manifest_text(vm_yaml("web", SHELL)))
    assert not build.reporter.finished()  # no step ever started


def test_the_first_failing_vm_stops_the_others_and_its_failure_is_the_builds(build) -> None:
    # web fails 0.3 s into its step: db is in its own step by then.
    build.script("web", fake.run("exit 1", exit_status=1, delay=0.3), fails=True)
    build.script(
        "db", fake.run("sleep 600", delay=600), fake.run("rm -f /tmp/rudder-script-"), fails=True
    )
    failing = "      - type: shell\n        shell: {inline: exit 1}\n"
    slow = "      - type: shell\n        shell: {inline: sleep 600}\n"
    with pytest.raises(StepFailed, match=r"VM web: step 1 .* exited with code 1"):
        build.run(manifest_text(vm_yaml("web", failing), vm_yaml("db", slow)))
    assert build.reporter.finished("db") == [(0, False, None, "VM web failed")]
    assert build.hv.domains == {}


def continue_when_waiting(build: FakeBuild, index: int, what: str = "continue", reason="") -> None:
    def decide() -> None:
        if build.reporter.waiting.wait(5):
            build.reporter.decide("web", index, what, reason)

    threading.Thread(target=decide, daemon=True).start()


def test_a_handbuild_step_waits_for_continue_then_goes_on_in_the_same_session(build) -> None:
    guest = build.script("web", fake.run("true"), fake.run("echo hi"))
    continue_when_waiting(build, 0)
    build.run(manifest_text(vm_yaml("web", HANDBUILD + SHELL)))
    assert ("waiting", "web", 0) in build.reporter.events
    assert "continued by a person" in build.reporter.text()
    assert guest.sessions == 1
    assert [f[:2] for f in build.reporter.finished()] == [(0, True), (1, True)]


def test_after_a_handbuild_step_that_rebooted_the_guest_the_build_reconnects(build) -> None:
    guest = build.script("web", fake.drop_connection("true"), fake.wait(), fake.run("echo hi"))
    continue_when_waiting(build, 0)
    build.run(manifest_text(vm_yaml("web", HANDBUILD + SHELL)))
    assert guest.sessions == 2
    assert any("did not survive the step" in line for line in build.reporter.text())


def test_a_handbuild_step_failed_by_a_person_fails_with_their_reason(build) -> None:
    build.script("web", fails=True)
    continue_when_waiting(build, 0, "fail", "the installer crashed")
    with pytest.raises(
        StepFailed, match=r"step 1 \(tune\) failed: failed by a person: the installer"
    ):
        build.run(manifest_text(vm_yaml("web", HANDBUILD)))


def test_a_handbuild_step_nobody_continues_fails_at_its_step_timeout(build) -> None:
    build.script("web", fails=True)
    steps = HANDBUILD + "        stepTimeout: 300ms\n"
    with pytest.raises(StepFailed, match="nobody pressed Continue within 0s"):
        build.run(manifest_text(vm_yaml("web", steps)))


def test_cancel_while_a_handbuild_step_waits_for_a_person_stops_the_build(build) -> None:
    build.script("web", fails=True)
    cancel_later(build, 0.2)
    with pytest.raises(BuildCancelled, match="cancelled by alice"):
        build.run(manifest_text(vm_yaml("web", HANDBUILD)))
    assert build.reporter.finished() == [(0, False, None, "cancelled by alice")]
