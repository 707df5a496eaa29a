"""A console through the shipped nginx site over HTTPS, to a real tiny guest's VNC server:
the portal set up as docs/operations.md says (deploy/ruddervirt.env, deploy/nginx)."""

from __future__ import annotations

import pytest
import websocket

from accounts.roles import INSTRUCTORS
from builds.models import BuildStatus, StepStatus
from builds.services import submit_manifest
from tests.consoles.rfbclient import RFBClient
from tests.e2e.livebuild import in_background  # noqa: F401  (fixture)
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
