"""Resuming a failed build and keeping a failed VM, on the tiny guest (issue 15 items 3, 4):
a build failing at its third step, then `manage.py build --resume` with the fixed manifest
reusing the first two steps; a kept failed VM whose console answers through the portal and
that "Clean up now" or its time's end removes."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from builds.models import Build, BuildStatus, BuildStep, StepStatus
from builds.runner import execute_build
from builds.services import submit_manifest
from jobs.reconcile import reconcile
from ruddervirt.hypervisor.driver import DomainState
from tests.browser.live import browser, live_portal  # noqa: F401  (fixtures)
from tests.browser.screens import save_screenshot
from tests.e2e.guestfs import read_file
from tests.e2e.test_build import log_text, manifest, template_disk
from tests.e2e.test_build_cache import FIRST_TWO, THIRD
from tests.e2e.test_handbuild import open_console, portal_session
from tests.helpers import make_user

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]
# Where the screenshots and the CLI output for the closing note go (kept after the test).
SHOTS = Path(os.environ.get("RUDDERVIRT_SHOTS", "/tmp/rv/shots"))


BROKEN = """\
      - name: mark
        type: shell
        shell:
          inline: |
            head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /root/mark
            cat /root/mark
      - name: check
        type: shell
        shell: {inline: "cp /root/mark /root/seen; exit 7"}
"""


def cli(*args: str) -> tuple[int, str]:
    """`manage.py build ARGS --wait`: its exit status and what it printed."""
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exited:
        call_command("build", *args, "--wait", stdout=out)
    return int(exited.value.code or 0), out.getvalue()


def kept_domain(build: Build) -> str:
    return build.vms.get(name="web").domain_name


def test_a_failed_build_resumed_with_the_fixed_manifest_reuses_its_first_two_steps(
    image_server,
    hv,
    tmp_path,
    live_portal,  # noqa: F811  (the fixtures imported above)
    browser,  # noqa: F811
):
    make_user("inst-resume", superuser=True)
    broken = tmp_path / "lab.yaml"
    broken.write_text(manifest(image_server, FIRST_TWO + THIRD.format(last="exit 7")))
    status, printed = cli(str(broken), "--keep-failed-vm=10m", "--user", "inst-resume")
    (SHOTS / "failed-cli.txt").write_text(printed)
    assert "the failed VM web is kept running for inspection for 10m" in printed
    failed = Build.objects.get(resumed_from=None)
    assert status == 1 and failed.status == BuildStatus.FAILED, printed
    rolled = next(
        line.text
        for line in failed.log_lines.filter(vm="web", stream="stdout")
        if len(line.text) == 32
    )
    # Kept: the domain runs with its VNC server, until its time is over.
    domain = kept_domain(failed)
    assert failed.kept_vm_until is not None
    assert hv.state(domain) == DomainState.RUNNING and hv.console_address(domain).port
    Build.objects.filter(pk=failed.pk).update(kept_vm_until=timezone.now() - timedelta(seconds=1))
    assert f"build {failed.pk}: removed the kept VM (its time is over)" in reconcile(hv)
    assert hv.state(domain) == DomainState.ABSENT

    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(manifest(image_server, FIRST_TWO + THIRD.format(last="true")))
    status, printed = cli("--resume", str(failed.pk), str(fixed), "--user", "inst-resume")
    (SHOTS / "resume-cli.txt").write_text(printed)
    resumed = Build.objects.get(resumed_from=failed)
    assert status == 0 and resumed.status == BuildStatus.SUCCEEDED, printed
    steps = {s.name: s for s in BuildStep.objects.filter(vm__build=resumed)}
    assert [steps[n].status for n in ("roll", "copy", "check")] == [
        StepStatus.REUSED, StepStatus.REUSED, StepStatus.SUCCEEDED
    ]  # fmt: skip
    assert {steps["roll"].reused_from, steps["copy"].reused_from} == {failed.pk}
    text = log_text(resumed)
    assert f"resume of build #{failed.pk} (Failed) with an edited manifest" in text
    assert f"resume of build #{failed.pk} (Failed) with an edited manifest" in printed
    assert f"roll (shell): reused from build #{failed.pk}" in printed
    assert f"copy (shell): reused from build #{failed.pk}" in printed
    # The third step of the resume saw the value only the failed build rolled.
    disk = template_disk(resumed)
    assert read_file(disk, "/root/seen-by-third").decode() == rolled

    live_portal.login(browser, make_user("inst-view", superuser=True))
    browser.get(live_portal.url(f"/builds/{resumed.pk}/"))
    assert f"resumes build #{failed.pk}" in browser.find_element(By.ID, "resumed-from").text
    save_screenshot(browser, "resumed-build.png", SHOTS)


PAGE_WAIT_S = 30


def test_a_kept_failed_vm_answers_on_its_console_until_clean_up_now_then_the_page_resumes_it(
    image_server,
    hv,
    live_portal,  # noqa: F811
    browser,  # noqa: F811
):
    alice = make_user("alice-kept", superuser=True)
    text = manifest(image_server, BROKEN)
    build = submit_manifest(
        text=text, module_name="kept", user=alice, queue=False, keep_failed_vm_s=600
    )
    build = execute_build(build.pk)
    assert build.status == BuildStatus.FAILED and build.kept_vm_until is not None, build.error
    domain = kept_domain(build)
    assert hv.state(domain) == DomainState.RUNNING

    http = portal_session(live_portal, alice)
    console = open_console(live_portal, http, build)  # a token is issued for the failed build
    init = console.handshake()
    assert init.width >= 640 and init.height >= 400
    console.request_update()
    assert console.read_update()
    console.ws.close()

    live_portal.login(browser, alice)
    browser.get(live_portal.url(f"/builds/{build.pk}/"))
    panel = browser.find_element(By.ID, "kept-vm")
    assert "Kept for inspection: web" in panel.text and "left" in panel.text
    save_screenshot(browser, "kept-failed-vm.png", SHOTS)
    panel.find_element(By.ID, "clean-up").click()
    # The click returns before the POST's answer arrives: wait for the page it leads to.
    WebDriverWait(browser, PAGE_WAIT_S).until(
        lambda b: "The kept VM was removed." in b.find_element(By.TAG_NAME, "body").text
    )
    assert hv.state(domain) == DomainState.ABSENT
    build.refresh_from_db()
    assert build.kept_vm_until is None

    # Edit and resume from the page: the fixed step runs, the first is reused.
    mark = next(
        line.text
        for line in build.log_lines.filter(vm="web", stream="stdout")
        if len(line.text) == 16
    )
    browser.find_element(By.ID, "edit-and-resume").click()
    box = browser.find_element(By.ID, "id_manifest")
    fixed = box.get_property("value").replace("; exit 7", "")
    browser.execute_script("arguments[0].value = arguments[1]", box, fixed)
    browser.find_element(By.ID, "resume-submit").click()
    WebDriverWait(browser, PAGE_WAIT_S).until(
        lambda b: (
            b.current_url.endswith("/")
            and f"/builds/{build.pk}/" not in b.current_url
            and "/builds/" in b.current_url
        )
    )
    resumed = Build.objects.get(resumed_from=build)
    assert browser.current_url.endswith(f"/builds/{resumed.pk}/")
    resumed = execute_build(resumed.pk)  # as a worker would (the test has none)
    assert resumed.status == BuildStatus.SUCCEEDED, resumed.error
    steps = {s.name: s for s in BuildStep.objects.filter(vm__build=resumed)}
    assert (steps["mark"].status, steps["mark"].reused_from) == (StepStatus.REUSED, build.pk)
    assert steps["check"].status == StepStatus.SUCCEEDED
    assert read_file(template_disk(resumed), "/root/seen").decode() == mark
    browser.get(live_portal.url(f"/builds/{resumed.pk}/"))
    save_screenshot(browser, "resumed-from-page.png", SHOTS)
