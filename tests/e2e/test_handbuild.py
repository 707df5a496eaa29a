"""A handbuild step with a real guest: a person works in the VM through the portal's console,
then presses Continue (or Fail)."""

from __future__ import annotations

import io
import time

import pytest
import requests
import websocket
from django.core.management import call_command
from selenium.webdriver.common.by import By

from builds.models import Build, BuildLogLine, BuildStatus, StepStatus
from builds.services import submit_manifest
from ruddervirt.engine import bootcmd
from tests.browser.live import browser, live_portal  # noqa: F401  (fixtures)
from tests.browser.screens import canvas_stats, console_state, save_screenshot
from tests.consoles.rfbclient import RFBClient
from tests.e2e.guestfs import read_file
from tests.e2e.livebuild import in_background, until  # noqa: F401  (fixture)
from tests.helpers import make_user
from tests.specs import template_disks

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]

INSTRUCTIONS = "Log in on the console as root and run: echo typed-through-vnc > /root/from-console"
TYPED = "echo typed-through-vnc > /root/from-console; sync\n"


def manifest(image_server) -> str:
    return f"""\
timeout: 20m
vms:
  - name: web
    source:
      url: {image_server.url("tiny-20250101.qcow2")}
      checksum: sha256:{image_server.sha256("tiny-20250101.qcow2")}
    resources: {{cpu: 1, memory: 256Mi}}
    cloudInit: {{}}
    provisioners:
      - name: by hand
        type: handbuild
        stepTimeout: 15m
        handbuild:
          instructions: |
            {INSTRUCTIONS}
      - name: check
        type: shell
        shell: {{inline: "cat /root/from-console"}}
"""


def portal_session(portal, user) -> requests.Session:
    """An HTTP session of `user` on the live portal, with its CSRF cookie."""
    http = requests.Session()
    http.cookies.set("sessionid", portal.session_cookie(user), domain="127.0.0.1")
    http.get(portal.url("/dashboard/"), timeout=30).raise_for_status()
    return http


def open_console(portal, http: requests.Session, build: Build) -> RFBClient:
    token = http.post(
        portal.url(f"/console/build/{build.pk}/web/token"),
        headers={"X-CSRFToken": http.cookies["csrftoken"]},
        timeout=30,
    )
    token.raise_for_status()
    issued = token.json()
    ws = websocket.create_connection(
        portal.ws_url(issued["ws_path"]),
        subprotocols=issued["subprotocols"],  # the token goes here, as the console page does
        cookie=f"sessionid={http.cookies['sessionid']}",
        origin=portal.base,
        timeout=60,
    )
    return RFBClient(ws)


def log_in_on_the_console_with_send_keys(hv, domain: str) -> None:
    """The hypervisor's send-key (the boot-command path) types the login, so both ways of
    typing into a VM are exercised against one guest."""
    segments = bootcmd.plan("<enter><wait2>root<enter><wait4>rudder<enter><wait4>")
    bootcmd.type_segments(
        segments,
        send=lambda codes: hv.send_keys(domain, list(codes)),
        wait=lambda seconds: bool(time.sleep(seconds)),
        log=lambda line: None,
        interval_s=0.05,
    )


def test_a_person_works_in_the_console_and_presses_continue(
    image_server,
    live_portal,  # noqa: F811  (the fixture imported above)
    hv,
    in_background,  # noqa: F811
):
    alice = make_user("alice-hb", superuser=False)
    from accounts.roles import INSTRUCTORS, add_to_role

    add_to_role(alice, INSTRUCTORS)
    build = submit_manifest(text=manifest(image_server), module_name="hb", user=alice, queue=False)
    running = in_background(build)
    running.wait_for_step("by hand", StepStatus.WAITING_FOR_USER, timeout=300)

    http = portal_session(live_portal, alice)
    status = http.get(live_portal.url(f"/builds/{build.pk}/status.json"), timeout=30).json()
    waiting = status["vms"][0]["steps"][0]
    assert waiting["instructions"].strip() == INSTRUCTIONS
    assert 0 < waiting["seconds_left"] <= 15 * 60

    # Two viewers at once: the test's own RFB client and a second one that only watches.
    console = open_console(live_portal, http, build)
    watcher = open_console(live_portal, http, build)
    init = console.handshake()
    assert init.width >= 640 and init.height >= 400 and init.bits_per_pixel in (16, 32)
    watcher.handshake()
    console.request_update()
    rects = console.read_update()
    assert rects and any(r.width * r.height > 0 for r in rects)
    assert any(any(r.pixels) for r in rects), "the framebuffer is all black"

    domain = build.vms.get().domain_name
    log_in_on_the_console_with_send_keys(hv, domain)
    console.type_text(TYPED)
    time.sleep(3)  # the shell runs the line
    watcher.request_update()
    assert watcher.read_update()  # the watcher still sees the screen
    console.ws.close()
    watcher.ws.close()

    pressed = time.time()
    response = http.post(
        live_portal.url(f"/builds/{build.pk}/continue/"),
        data={"vm": "web", "csrfmiddlewaretoken": http.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 302
    check = running.wait_for_step("check", StepStatus.RUNNING, timeout=10)
    assert check.started_at.timestamp() - pressed < 2.0, "the build took over 2 s to go on"

    done = running.finish()
    assert done.status == BuildStatus.SUCCEEDED, done.error
    disk = str(template_disks(done.version)[0])
    assert read_file(disk, "/root/from-console") == b"typed-through-vnc\n"
    log = "\n".join(BuildLogLine.objects.filter(build=done).values_list("text", flat=True))
    assert "continue pressed by alice-hb" in log
    assert "did not survive the step" not in log  # the build's SSH session was kept
    assert "typed-through-vnc" in log  # the next step read the file


def test_fail_from_the_command_line_fails_the_build_with_the_reason(
    image_server,
    in_background,  # noqa: F811  (the fixture imported above)
):
    admin = make_user("root-hb", superuser=True)
    build = submit_manifest(text=manifest(image_server), module_name="hb2", user=admin, queue=False)
    running = in_background(build)
    waiting = running.wait_for_step("by hand", StepStatus.WAITING_FOR_USER, timeout=300)
    assert waiting.user_decision == ""

    out = io.StringIO()
    call_command(
        "build_continue", str(build.pk), "--vm", "web", "--fail", "licence server down",
        "--user", "root-hb", stdout=out,
    )  # fmt: skip
    assert f"build {build.pk}: fail sent to VM web" in out.getvalue()

    done = running.finish()
    assert done.status == BuildStatus.FAILED
    assert "failed by a person: licence server down" in done.error
    log = "\n".join(BuildLogLine.objects.filter(build=done).values_list("text", flat=True))
    assert "fail pressed by root-hb: licence server down" in log
    assert running.step("check").status == StepStatus.PENDING


def paste_into_console(driver, text: str) -> None:
    """Use the console's "Paste as keystrokes" (inside the build page's console frame)."""
    box = driver.find_element(By.CSS_SELECTOR, ".console-paste-text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, ".console-paste-send").click()
    until(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, ".console-paste-send").is_enabled(),
        30,
        "typing never finished",
    )


@pytest.mark.browser
def test_an_instructor_finishes_a_handbuild_step_in_the_browser(
    image_server,
    live_portal,  # noqa: F811  (the fixtures imported above)
    browser,  # noqa: F811
    tmp_path,
    in_background,  # noqa: F811
):
    """The whole story in Chromium: the build page shows the step's instructions beside the
    live console; the instructor types in the console and presses Continue; the build ends."""
    from accounts.roles import INSTRUCTORS, add_to_role

    alice = make_user("alice-web", superuser=False)
    add_to_role(alice, INSTRUCTORS)
    build = submit_manifest(text=manifest(image_server), module_name="hb3", user=alice, queue=False)
    live_portal.login(browser, alice)
    browser.get(live_portal.url(f"/builds/{build.pk}/"))
    running = in_background(build)

    panel = until(
        browser,
        lambda d: (
            d.find_element(By.CSS_SELECTOR, '.handbuild-panel[data-handbuild-vm="web"]')
            if d.find_element(By.CSS_SELECTOR, ".handbuild-panel").is_displayed()
            else False
        ),
        300,
        "the handbuild panel never appeared",
        live_portal,
    )
    assert panel.find_element(By.CSS_SELECTOR, ".instructions").text.strip() == INSTRUCTIONS
    until(
        browser,
        lambda d: panel.find_element(By.CSS_SELECTOR, ".time-left").text.endswith("left"),
        10,
        "no time left shown",
    )
    minutes = int(panel.find_element(By.CSS_SELECTOR, ".time-left").text.split(":")[0])
    assert 10 <= minutes <= 15

    browser.switch_to.frame(panel.find_element(By.CSS_SELECTOR, "iframe.console-frame"))
    until(browser, lambda d: console_state(d) == "connected", 60, "no console", live_portal)
    until(browser, lambda d: canvas_stats(d)["colours"] > 1, 60, "blank console")
    browser.find_element(By.CSS_SELECTOR, ".console-paste-toggle").click()
    paste_into_console(browser, "\n")
    time.sleep(2)
    paste_into_console(browser, "root\n")
    time.sleep(4)
    paste_into_console(browser, "rudder\n")
    time.sleep(4)
    paste_into_console(browser, TYPED)
    time.sleep(3)
    browser.switch_to.default_content()
    browser.execute_script("document.querySelector('.handbuild-panel').scrollIntoView()")
    save_screenshot(browser, "handbuild-step.png", tmp_path)
    # People reboot from the console: the build must go on over a new SSH connection.
    browser.switch_to.frame(panel.find_element(By.CSS_SELECTOR, "iframe.console-frame"))
    paste_into_console(browser, "reboot\n")
    time.sleep(2)
    assert console_state(browser) == "connected"  # QEMU keeps its VNC server over a reboot
    browser.switch_to.default_content()

    panel.find_element(By.XPATH, ".//button[normalize-space()='Continue the build']").click()
    until(
        browser,
        lambda d: d.find_element(By.ID, "build-status").text == "Succeeded",
        600,
        "the build page never showed Succeeded",
        live_portal,
    )
    assert not browser.find_element(By.CSS_SELECTOR, ".handbuild-panel").is_displayed()
    done = running.finish()
    assert done.status == BuildStatus.SUCCEEDED, done.error
    disk = str(template_disks(done.version)[0])
    assert read_file(disk, "/root/from-console") == b"typed-through-vnc\n"
    log = "\n".join(BuildLogLine.objects.filter(build=done).values_list("text", flat=True))
    assert "did not survive the step" in log and "SSH is up" in log
