"""Provisioner steps on fakes (FakeHypervisor, ScriptedCommunicator, FakeImages): what each step
asks of the guest, how its failures, timeouts and connection drops are reported."""

from __future__ import annotations

import pytest

from ruddervirt.engine.errors import StepFailed
from ruddervirt.guest import fake
from ruddervirt.guest.errors import TransferFailed
from tests.engine.buildkit import FakeBuild, manifest_text, vm_yaml

SHELL = '      - name: hello\n        type: shell\n        shell: {inline: "echo hi"}\n'


def shell(inline: str, *, name: str = "", timeout: str = "", env: str = "") -> str:
    text = f"      - type: shell\n        shell: {{inline: {inline!r}{env}}}\n"
    if name:
        text = text.replace("      - type", f"      - name: {name}\n        type", 1)
    if timeout:
        text += f"        stepTimeout: {timeout}\n"
    return text


@pytest.fixture
def build(tmp_path) -> FakeBuild:
    return FakeBuild(tmp_path)


def test_a_shell_step_streams_its_output_lines_to_the_log_with_their_stream(build) -> None:
    build.script("web", fake.run("echo hi", "hi", "there", stderr=["careful"]))
    build.run(manifest_text(vm_yaml("web", SHELL)))
    assert build.reporter.stream_of("hi") == "stdout"
    assert build.reporter.stream_of("there") == "stdout"
    assert build.reporter.stream_of("careful") == "stderr"
    assert build.reporter.finished()[0][:3] == (0, True, 0)


def test_a_shell_step_is_one_command_with_its_script_and_env_on_stdin(build) -> None:
    guest = build.script("web", fake.run("echo $GREETING"))
    build.run(manifest_text(vm_yaml("web", shell("echo $GREETING", env=", env: {GREETING: hi}"))))
    call = next(c for c in guest.calls if c.op == "run" and b"GREETING" in c.data)
    assert b"export GREETING=hi\n" in call.data and call.data.endswith(b"echo $GREETING")
    assert "trap 'rm -f /tmp/rudder-script-" in call.what  # removed whatever the script does
    assert not [c for c in guest.calls if c.op == "upload"]


def test_a_failing_shell_step_names_the_step_and_its_exit_code(build) -> None:
    build.script("web", fake.run("exit 3", exit_status=3), fails=True)
    steps = shell("exit 3", name="migrate") + SHELL
    with pytest.raises(StepFailed) as failed:
        build.run(manifest_text(vm_yaml("web", steps)))
    assert str(failed.value) == "VM web: step 1 (migrate) failed: the script exited with code 3"
    assert (failed.value.index, failed.value.exit_code) == (0, 3)
    assert build.reporter.finished() == [(0, False, 3, "the script exited with code 3")]
    assert ("started", "web", 1) not in build.reporter.events  # the next step never ran
    build.guests["web"].assert_done()


def test_a_step_timeout_fails_the_step_and_the_script_is_still_removed(build) -> None:
    build.script(
        "web", fake.run("sleep 60", delay=30), fake.run("rm -f /tmp/rudder-script-"), fails=True
    )
    with pytest.raises(
        StepFailed, match=r"step 1 \(slow\) failed: timed out after 0s \(stepTimeout\)"
    ):
        build.run(manifest_text(vm_yaml("web", shell("sleep 60", name="slow", timeout="300ms"))))
    build.guests["web"].assert_done()
    timeout = build.guests["web"].calls[1].timeout
    assert timeout is not None and 0.1 < timeout <= 0.3


def test_a_connection_lost_during_a_step_fails_that_step_with_the_reason(build) -> None:
    build.script("web", fake.drop_connection("reboot-ish", "going"), fails=True)
    with pytest.raises(StepFailed, match=r"step 1 .* failed: connection to the fake guest lost"):
        build.run(manifest_text(vm_yaml("web", shell("reboot-ish"))))
    assert build.reporter.finished()[0][1] is False
    assert "going" in build.reporter.text()


def test_a_file_step_uploads_the_file_to_its_destination(build) -> None:
    guest = build.script("web", fake.upload("/etc/motd"))
    steps = "      - type: file\n        file: {fileRef: motd, destination: /etc/motd}\n"
    top = 'files:\n  - name: motd\n    inline: "Welcome"\n'
    build.run(manifest_text(vm_yaml("web", steps), top=top))
    upload = next(c for c in guest.calls if c.op == "upload")
    assert (upload.what, upload.data) == ("/etc/motd", b"Welcome")
    assert "uploaded motd to /etc/motd" in build.reporter.text()


def test_a_refused_upload_fails_the_step_with_the_guests_words(build) -> None:
    refused = TransferFailed("upload to /root/x failed: Permission denied")
    build.script("web", fake.upload("/root/x", error=refused), fails=True)
    steps = "      - type: file\n        file: {fileRef: f, destination: /root/x}\n"
    with pytest.raises(StepFailed, match="Permission denied"):
        build.run(manifest_text(vm_yaml("web", steps), top='files:\n  - {name: f, inline: "x"}\n'))
    assert build.reporter.finished() == [(0, False, None, str(refused))]


def test_a_reboot_step_reboots_the_guest_and_goes_on_with_the_next_step(build) -> None:
    guest = build.script("web", fake.reboot(takes=0.05), fake.run("echo hi"))
    steps = '      - type: reboot\n        reboot: {command: "sudo reboot"}\n' + SHELL
    build.run(manifest_text(vm_yaml("web", steps)))
    assert guest.reboots == 1
    assert [c.what for c in guest.calls if c.op == "reboot"] == ["sudo reboot"]
    assert "the guest rebooted and SSH is back" in build.reporter.text()
    assert [f[:2] for f in build.reporter.finished()] == [(0, True), (1, True)]


def test_a_reboot_slower_than_its_step_timeout_fails_the_step(build) -> None:
    build.script("web", fake.reboot(takes=30), fails=True)
    steps = "      - type: reboot\n        reboot: {}\n        stepTimeout: 200ms\n"
    with pytest.raises(StepFailed, match="did not reboot in time"):
        build.run(manifest_text(vm_yaml("web", steps)))


def test_steps_run_in_manifest_order_each_reported_started_then_finished(build) -> None:
    build.script("web", fake.run("one"), fake.run("two"), fake.run("three"))
    build.run(manifest_text(vm_yaml("web", shell("one") + shell("two") + shell("three"))))
    steps = [e[:3] for e in build.reporter.events if e[0] in ("started", "finished")]
    assert steps == [
        ("started", "web", 0), ("finished", "web", 0), ("started", "web", 1),
        ("finished", "web", 1), ("started", "web", 2), ("finished", "web", 2),
    ]  # fmt: skip
