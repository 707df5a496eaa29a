"""Builds through the real queue: an RQ worker process, a crash and its recovery, the CLI."""

from __future__ import annotations

import json
import time

import django_rq
import pytest

from builds.models import BuildStatus, BuildStep, StepStatus
from builds.runner import build_workdir
from builds.services import start_build
from jobs.models import Operation
from jobs.reconcile import reconcile
from modules.services import create_module
from tests.e2e.test_build import manifest
from tests.e2e.workers import kill_hard, manage, start_worker
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]


@pytest.fixture(autouse=True)
def empty_queue():
    django_rq.get_queue("builds").empty()
    yield
    django_rq.get_queue("builds").empty()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_a_worker_process_runs_a_queued_build(image_server):
    user = make_user("alice", superuser=True)
    recipe = "      - {name: hi, type: shell, shell: {inline: 'echo from-the-worker'}}\n"
    outcome = create_module(
        name="queued", description="", text=manifest(image_server, recipe), user=user
    )
    build = start_build(module=outcome.module, user=user)
    [op] = Operation.objects.for_target(build)
    assert op.rq_job_id and op.kind == "build"  # enqueued once the transaction committed
    worker = start_worker("builds", burst=True)
    output, _ = worker.communicate(timeout=600)
    build.refresh_from_db()
    assert build.status == BuildStatus.SUCCEEDED, (build.error, output[-3000:])
    op.refresh_from_db()
    assert op.status == "Succeeded" and op.outcome == "Succeeded", op.error
    assert op.worker and op.heartbeat_at and op.finished_at >= op.started_at


def test_a_crashed_worker_leaves_a_failed_build_and_nothing_on_the_host(image_server, hv):
    user = make_user("alice", superuser=True)
    recipe = "      - {name: long, type: shell, shell: {inline: 'sleep 600'}}\n"
    outcome = create_module(
        name="crashy", description="", text=manifest(image_server, recipe), user=user
    )
    build = start_build(module=outcome.module, user=user)
    worker = start_worker("builds")
    horse = 0
    try:
        wait_for(
            lambda: BuildStep.objects.filter(vm__build=build, status=StepStatus.RUNNING).exists(),
            240,
            "the build to reach its step",
        )
        assert [d for d in hv.list_domains("") if d.metadata.get("build") == f"b{build.pk}"]
        run = Operation.objects.for_target(build).get(status="Running")
        horse = int(run.worker.rsplit(":", 1)[1])
    finally:
        kill_hard(worker, horse)
    build.refresh_from_db()
    assert build.status == BuildStatus.BUILDING  # nobody has noticed yet
    actions = reconcile(hv)
    build.refresh_from_db()
    assert build.status == BuildStatus.FAILED
    assert "interrupted" in build.error and "gone" in build.error
    assert any(f"build {build.pk}" in a for a in actions)
    assert Operation.objects.for_target(build).get().status == "Interrupted"
    assert not [d for d in hv.list_domains("") if d.metadata.get("build") == f"b{build.pk}"]
    assert not [n for n in hv.list_networks("") if n.metadata.get("build") == f"b{build.pk}"]
    assert not build_workdir(build.pk).exists()


def test_build_command_waits_streams_and_reports_json(image_server, tmp_path):
    make_user("root-admin", superuser=True)
    recipe = "      - {name: hi, type: shell, shell: {inline: 'echo streamed-line'}}\n"
    path = tmp_path / "cli-lab.yaml"
    path.write_text(manifest(image_server, recipe))
    result = manage("build", str(path), "--wait", "--json")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert lines[0].startswith("build ")
    build_id = int(lines[0].split()[1])
    assert any("streamed-line" in line for line in lines)
    summary = json.loads(lines[-1])
    assert summary == {
        "build": build_id,
        "status": "Succeeded",
        "module": "cli-lab",
        "version": 1,
        "duration_s": summary["duration_s"],
    }
    assert summary["duration_s"] > 0
    status = json.loads(manage("build_status", str(build_id), "--json").stdout)
    assert status["vms"] == [
        {
            "name": "web",
            "phase": "Succeeded",
            "message": "",
            "steps": [
                {
                    "name": "hi",
                    "type": "shell",
                    "status": "Succeeded",
                    "exit_code": 0,
                    "duration_s": status["vms"][0]["steps"][0]["duration_s"],
                    "message": status["vms"][0]["steps"][0]["message"],
                },
            ],
        },
    ]


def test_build_command_exits_1_when_the_build_fails(image_server, tmp_path):
    make_user("root-admin", superuser=True)
    path = tmp_path / "broken.yaml"
    path.write_text(
        manifest(image_server, "      - {name: nope, type: shell, shell: {inline: 'exit 7'}}\n")
    )
    result = manage("build", str(path), "--wait", "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "Failed"
    assert "step 1 (nope)" in summary["error"] and "code 7" in summary["error"]


def test_retries_run_a_failed_build_again(image_server):
    from builds.runner import execute_build
    from builds.services import submit_manifest

    user = make_user("alice", superuser=True)
    text = "retries: 1\n" + manifest(
        image_server, "      - {name: nope, type: shell, shell: {inline: 'exit 3'}}\n"
    )
    build = submit_manifest(text=text, module_name="retry", user=user, queue=False)
    done = execute_build(build.pk)
    assert done.status == BuildStatus.FAILED
    assert done.attempt == 2
    log = "\n".join(done.log_lines.values_list("text", flat=True))
    assert "attempt 1 failed" in log and "retrying (attempt 2 of 2)" in log
