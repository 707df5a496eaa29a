"""A console through the shipped nginx site over HTTPS, to a real tiny guest's VNC server:
the portal set up as docs/operations.md says (deploy/ruddervirt.env, deploy/nginx)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from selenium.webdriver.common.by import By

from accounts.roles import INSTRUCTORS
from builds.models import BuildStatus, StepStatus
from builds.services import request_cancel, submit_manifest
from tests.browser.live import start_chromium
from tests.browser.screens import canvas_stats, console_state, save_screenshot
from tests.consoles.rfbclient import RFBClient
from tests.e2e.livebuild import in_background, until  # noqa: F401  (fixture)
from tests.e2e.test_handbuild import manifest
from tests.helpers import make_user
from tests.ops.proxy import proxied_portal  # noqa: F401  (fixture)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("clean_host"),
]


def test_an_instructor_logged_in_over_https_opens_a_build_vms_console_through_nginx(
    image_server,
    proxied_portal,  # noqa: F811  (the fixture imported above)
    in_background,  # noqa: F811
):
    hana = make_user("hana-tls", INSTRUCTORS)
    build = submit_manifest(
        text=manifest(image_server), module_name="tls-console", user=hana, queue=False
    )
    running = in_background(build)
    running.wait_for_step("by hand", StepStatus.WAITING_FOR_USER, timeout=300)

    http, answer = proxied_portal.log_in("hana-tls", "pw-hana-tls")
    assert answer.status_code == 302, answer.text[:500]
    assert "max-age=31536000" in answer.headers["Strict-Transport-Security"]
    assert all(cookie.secure for cookie in http.cookies)

    # The console page's POST for a token, over HTTPS with the CSRF token, as the page does.
    issued = http.post(
        proxied_portal.https(f"/console/build/{build.pk}/web/token"),
        headers={"X-CSRFToken": http.cookies["csrftoken"]},
        timeout=30,
    )
    assert issued.status_code == 200, issued.text[:500]
    token = issued.json()
    ws = websocket.create_connection(
        proxied_portal.wss(token["ws_path"]),
        subprotocols=token["subprotocols"],
        cookie=f"sessionid={http.cookies['sessionid']}",
        origin=proxied_portal.origin,
        sslopt={"ca_certs": str(proxied_portal.certificate)},
        timeout=60,
    )
    console = RFBClient(ws)
    try:
        init = console.handshake()  # QEMU's RFB banner and ServerInit, through nginx
        assert init.width >= 640 and init.height >= 400
        console.request_update()
        rects = console.read_update()
        assert any(any(r.pixels) for r in rects), "the framebuffer is all black"
    finally:
        ws.close()

    cancelled = http.post(
        proxied_portal.https(f"/builds/{build.pk}/cancel/"),
        data={"csrfmiddlewaretoken": http.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=30,
    )
    assert cancelled.status_code == 302
    assert running.finish().status == BuildStatus.CANCELLED
    access = (proxied_portal.nginx.folder / "access.log").read_text()
    assert f'"GET {token["ws_path"]} HTTP/1.1" 101' in access  # the upgrade went through nginx


def upgrades(portal) -> int:
    """WebSocket upgrades of /ws/console/ (the token a subprotocol) in nginx's access log."""
    access = (portal.nginx.folder / "access.log").read_text()
    return access.count('"GET /ws/console/ HTTP/1.1" 101')


def spki_sha256(certificate: Path) -> str:
    """The base64 SHA-256 of the certificate's public key, as Chromium's
    --ignore-certificate-errors-spki-list takes it."""
    key = x509.load_pem_x509_certificate(certificate.read_bytes()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


@pytest.fixture
def trusting_browser(proxied_portal, tmp_path) -> Iterator:  # noqa: F811
    """Chromium that trusts the test's self-signed certificate, and no other bad one."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    spki = spki_sha256(proxied_portal.certificate)
    driver = start_chromium(profile, f"--ignore-certificate-errors-spki-list={spki}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.browser
def test_in_chromium_over_https_the_build_page_shows_a_live_console_through_nginx(
    image_server,
    proxied_portal,  # noqa: F811
    trusting_browser,
    in_background,  # noqa: F811
    tmp_path,
):
    hana = make_user("hana-web-tls", INSTRUCTORS)
    build = submit_manifest(
        text=manifest(image_server), module_name="tls-browser", user=hana, queue=False
    )
    running = in_background(build)
    running.wait_for_step("by hand", StepStatus.WAITING_FOR_USER, timeout=300)

    upgrades_before = upgrades(proxied_portal)
    browser = trusting_browser
    browser.get(proxied_portal.https("/login/"))
    browser.find_element(By.NAME, "username").send_keys("hana-web-tls")
    browser.find_element(By.NAME, "password").send_keys("pw-hana-web-tls")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    until(browser, lambda d: "/login/" not in d.current_url, 30, "the login did not go through")
    cookies = {cookie["name"]: cookie for cookie in browser.get_cookies()}
    assert cookies["sessionid"]["secure"] and cookies["sessionid"]["httpOnly"]
    assert cookies["csrftoken"]["secure"]

    browser.get(proxied_portal.https(f"/builds/{build.pk}/"))
    panel = until(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, '.handbuild-panel[data-handbuild-vm="web"]'),
        60,
        "no handbuild panel",
        proxied_portal,
    )
    browser.switch_to.frame(panel.find_element(By.CSS_SELECTOR, "iframe.console-frame"))
    until(browser, lambda d: console_state(d) == "connected", 60, "no console", proxied_portal)
    until(browser, lambda d: canvas_stats(d)["colours"] > 1, 60, "a blank console")
    browser.switch_to.default_content()
    browser.execute_script("document.querySelector('.handbuild-panel').scrollIntoView()")
    save_screenshot(browser, "console-through-nginx.png", tmp_path)
    assert browser.current_url.startswith(proxied_portal.origin)

    request_cancel(build, user=hana)
    assert running.finish().status == BuildStatus.CANCELLED
    assert upgrades(proxied_portal) > upgrades_before  # the page's console went through nginx
