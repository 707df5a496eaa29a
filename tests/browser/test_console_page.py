"""The console page in a real browser, against a real QEMU domain's VNC server."""

from __future__ import annotations

import pytest
from django.conf import settings
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from builds.models import Build, BuildStatus, BuildVM, VMPhase
from builds.services import submit_manifest
from ruddervirt.hypervisor.specs import DomainSpec
from ruddervirt.runtime import get_hypervisor
from tests.browser.screens import canvas_stats, console_state, diagnosis, save_screenshot

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def bios_vm(instructor, good_manifest):
    """A building build whose VM "web" is a diskless domain: SeaBIOS draws its screen
    within a second or two, which is all a console needs."""
    build = submit_manifest(text=good_manifest, module_name="lab", user=instructor, queue=False)
    Build.objects.filter(pk=build.pk).update(status=BuildStatus.BUILDING)
    name = f"{settings.RUDDERVIRT_NAME_PREFIX}b{build.pk}-web"
    hv = get_hypervisor()
    hv.define(
        DomainSpec(
            name=name,
            vcpus=1,
            memory_bytes=64 * 1024 * 1024,
            domain_type=settings.RUDDERVIRT_DOMAIN_TYPE,
            metadata={"kind": "build", "build": f"b{build.pk}"},
        )
    )
    hv.start(name)
    BuildVM.objects.filter(build=build).update(domain_name=name, phase=VMPhase.BOOTING)
    try:
        yield build, name
    finally:
        hv.destroy(name)
        hv.undefine(name)


def wait_for_state(browser, state: str, timeout: float = 60, portal=None) -> None:
    try:
        WebDriverWait(browser, timeout, poll_frequency=0.2).until(
            lambda d: console_state(d) == state
        )
    except TimeoutException:
        pytest.fail(f"the console never became {state!r}\n" + diagnosis(browser, portal))


def test_the_console_page_connects_and_shows_the_vm_screen(
    live_portal, browser, instructor, bios_vm, tmp_path
):
    build, _ = bios_vm
    live_portal.login(browser, instructor)
    browser.get(live_portal.url(f"/console/build/{build.pk}/web/"))
    wait_for_state(browser, "connected", portal=live_portal)
    WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: canvas_stats(d)["colours"] > 1, message="the console canvas stayed blank"
    )
    stats = canvas_stats(browser)
    assert stats["width"] >= 640 and stats["height"] >= 400
    assert 0 < stats["lit"] < 1
    assert "Connected" in browser.find_element(By.CSS_SELECTOR, ".console-status").text
    save_screenshot(browser, "console-page.png", tmp_path)


def test_the_console_reconnects_when_the_vm_restarts(live_portal, browser, instructor, bios_vm):
    build, name = bios_vm
    live_portal.login(browser, instructor)
    browser.get(live_portal.url(f"/console/build/{build.pk}/web/"))
    wait_for_state(browser, "connected")
    hv = get_hypervisor()
    hv.destroy(name)  # QEMU exits: its VNC server goes with it
    wait_for_state(browser, "disconnected", timeout=20)
    hv.start(name)  # a new QEMU, perhaps on another VNC port
    wait_for_state(browser, "connected", timeout=60)


def test_a_console_whose_right_was_lost_stops_reconnecting(
    live_portal, browser, other_instructor, instructor, bios_vm
):
    build, name = bios_vm
    live_portal.login(browser, instructor)
    browser.get(live_portal.url(f"/console/build/{build.pk}/web/"))
    wait_for_state(browser, "connected")
    # The module changes hands, then the VM restarts: the reconnect is refused for good.
    build.module.owner = other_instructor
    build.module.save()
    get_hypervisor().destroy(name)
    wait_for_state(browser, "unavailable", timeout=30)
    status = browser.find_element(By.CSS_SELECTOR, ".console-status").text
    assert "only the module's owner and administrators" in status


def test_a_console_the_portal_closes_says_why_and_stays_closed(
    live_portal, browser, other_instructor, instructor, bios_vm
):
    """The module changes hands while its build VM's console is open (the VM keeps
    running): the portal's next re-check closes it, and the page shows the reason."""
    build, _ = bios_vm
    live_portal.login(browser, instructor)
    browser.get(live_portal.url(f"/console/build/{build.pk}/web/"))
    wait_for_state(browser, "connected")
    build.module.owner = other_instructor
    build.module.save()
    wait_for_state(browser, "unavailable", timeout=30)
    status = browser.find_element(By.CSS_SELECTOR, ".console-status").text
    assert status.startswith("Console closed: ")
    assert "only the module's owner and administrators" in status


PASTE_PROBE = """
const view = document.querySelector('.console').consoleView;
window.sentKeys = [];
view.rfb.sendKey = (keysym, code, down) => window.sentKeys.push([keysym, code, down]);
"""


def test_paste_as_keystrokes_types_with_shift_where_a_us_keyboard_needs_it(
    live_portal, browser, instructor, bios_vm
):
    build, _ = bios_vm
    live_portal.login(browser, instructor)
    browser.get(live_portal.url(f"/console/build/{build.pk}/web/"))
    wait_for_state(browser, "connected")
    browser.execute_script(PASTE_PROBE)
    browser.find_element(By.CSS_SELECTOR, ".console-paste-toggle").click()
    browser.find_element(By.CSS_SELECTOR, ".console-paste-text").send_keys("aB>\u00e9")
    browser.find_element(By.CSS_SELECTOR, ".console-paste-send").click()
    WebDriverWait(browser, 10).until(
        lambda d: "typed 3" in d.find_element(By.CSS_SELECTOR, ".console-paste-progress").text
    )
    sent = browser.execute_script("return window.sentKeys")
    shift = 0xFFE1
    assert sent == [
        [0x61, "KeyA", True], [0x61, "KeyA", False],
        [shift, "ShiftLeft", True], [0x42, "KeyB", True], [0x42, "KeyB", False],
        [shift, "ShiftLeft", False],
        [shift, "ShiftLeft", True], [0x3E, "Period", True], [0x3E, "Period", False],
        [shift, "ShiftLeft", False],
    ]  # fmt: skip
    progress = browser.find_element(By.CSS_SELECTOR, ".console-paste-progress").text
    assert "skipped 1" in progress
