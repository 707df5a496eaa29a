"""HTTPS through the shipped nginx site (deploy/nginx/ruddervirt.conf) with the production
settings of deploy/ruddervirt.env: a real nginx and a real daphne on loopback.

The console through the proxy to a real guest's VNC server: tests/e2e/test_console_through_proxy.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import websocket
from django.core.management import CommandError, call_command

from accounts.roles import INSTRUCTORS
from modules.models import Module
from ruddervirt import proc, proxyconf
from tests.helpers import make_user
from tests.ops.proxy import HOST, Nginx, free_port, proxied_portal  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = (ROOT / "examples" / "cloud-image-web.yaml").read_text()


def site_in(folder: Path, **changes) -> proxyconf.Site:
    values = dict(
        server_name="portal.example.edu",
        certificate=folder / "portal.crt",
        certificate_key=folder / "portal.key",
    )
    return proxyconf.Site(**{**values, **changes})


def test_the_shipped_site_is_filled_in_completely_and_nginx_accepts_it(tmp_path):
    site = site_in(
        tmp_path, https_listen=f"{HOST}:{free_port()}", http_listen=f"{HOST}:{free_port()}"
    )
    proxyconf.self_signed("portal.example.edu", site.certificate, site.certificate_key, days=1)
    text = proxyconf.render(site)
    assert "@" not in text.replace("$request_uri", "")
    assert "server_name portal.example.edu;" in text
    assert f"return 301 https://$host:{site.https_port}$request_uri;" in text
    nginx = Nginx(tmp_path / "nginx", site)
    assert "test is successful" in nginx.test_config()


def test_the_redirect_of_port_443_names_no_port(tmp_path):
    assert "return 301 https://$host$request_uri;" in proxyconf.render(site_in(tmp_path))


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"server_name": "portal.example.edu; include /etc/passwd"}, "--server-name"),
        ({"upstream": "127.0.0.1"}, "--upstream"),
        ({"https_listen": "443 ssl; listen 80"}, "--https"),
        ({"certificate": Path("relative.crt")}, "--cert"),
        ({"certificate_key": Path("/etc/ssl/my key.pem")}, "--key"),
    ],
)
def test_a_value_nginx_would_misread_is_refused_with_its_option(tmp_path, change, said):
    with pytest.raises(proxyconf.ProxyConfigError, match=said):
        proxyconf.render(site_in(tmp_path, **change))


def test_nginx_config_writes_the_site_and_a_self_signed_certificate_for_its_name(tmp_path):
    cert, key, out = tmp_path / "tls/portal.crt", tmp_path / "tls/portal.key", tmp_path / "site"
    call_command(
        "nginx_config", "--server-name", "portal.example.edu", "--cert", str(cert),
        "--key", str(key), "--self-signed", "--output", str(out),
    )  # fmt: skip
    assert f"ssl_certificate {cert};" in out.read_text()
    assert key.stat().st_mode & 0o777 == 0o600
    shown = proc.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"], timeout=30
    )
    assert "DNS:portal.example.edu" in shown.stdout.decode()
    with pytest.raises(CommandError, match="exists: not replaced"):
        call_command(
            "nginx_config", "--server-name", "portal.example.edu", "--cert", str(cert),
            "--key", str(key), "--self-signed",
        )  # fmt: skip


# --- through a running nginx -------------------------------------------------------------
@pytest.mark.django_db(transaction=True)
def test_over_https_a_person_logs_in_with_csrf_and_a_post_works_with_secure_cookies_and_hsts(
    proxied_portal,  # noqa: F811  (the fixture imported above)
):
    make_user("ines-tls", INSTRUCTORS)
    http, answer = proxied_portal.log_in("ines-tls", "pw-ines-tls")
    assert answer.status_code == 302, answer.text[:500]
    assert answer.headers["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains; preload"
    )
    cookies = {cookie.name: cookie for cookie in http.cookies}
    assert cookies["sessionid"].secure and cookies["csrftoken"].secure
    assert "Secure" in answer.headers["Set-Cookie"]

    created = http.post(
        proxied_portal.https("/modules/new/"),
        data={
            "name": "behind-tls",
            "description": "",
            "manifest": MANIFEST,
            "csrfmiddlewaretoken": http.cookies["csrftoken"],
        },
        allow_redirects=False,
        timeout=30,
    )
    assert created.status_code == 302, created.text[:2000]
    assert created.headers["Location"] == "/modules/behind-tls/"
    assert Module.objects.filter(name="behind-tls").exists()

    forged = http.post(
        proxied_portal.https("/modules/new/"),
        data={"name": "no-token", "manifest": MANIFEST},
        allow_redirects=False,
        timeout=30,
    )
    assert forged.status_code == 403
    assert not Module.objects.filter(name="no-token").exists()


def test_plain_http_is_redirected_to_https_except_the_health_check(proxied_portal):  # noqa: F811
    base = f"http://{HOST}:{proxied_portal.http_port}"
    moved = requests.get(base + "/login/?next=/labs/", allow_redirects=False, timeout=30)
    assert moved.status_code == 301
    assert moved.headers["Location"] == proxied_portal.https("/login/?next=/labs/")
    assert requests.get(base + "/healthz", allow_redirects=False, timeout=30).status_code == 200


def test_daphne_asked_directly_over_http_redirects_to_https(proxied_portal):  # noqa: F811
    # SECURE_SSL_REDIRECT: without nginx's X-Forwarded-Proto the request is plain HTTP.
    direct = requests.get(proxied_portal.url("/login/"), allow_redirects=False, timeout=30)
    assert direct.status_code == 301
    assert direct.headers["Location"].startswith("https://")


def console_log_lines(portal) -> list[str]:
    return [line for line in portal.log_path.read_text().splitlines() if "console token" in line]


@pytest.mark.django_db(transaction=True)
def test_a_console_websocket_from_another_origin_is_refused_and_from_the_portal_reaches_it(
    proxied_portal,  # noqa: F811
):
    make_user("olga-tls")
    http, answer = proxied_portal.log_in("olga-tls", "pw-olga-tls")
    assert answer.status_code == 302
    sslopt = {"ca_certs": str(proxied_portal.certificate)}
    cookie = f"sessionid={http.cookies['sessionid']}"
    url = proxied_portal.wss("/ws/console/" + "x" * 43)
    before = len(console_log_lines(proxied_portal))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            url, origin="https://evil.example", cookie=cookie, sslopt=sslopt, timeout=30
        )
    assert refused.value.status_code == 403
    time.sleep(0.5)
    assert len(console_log_lines(proxied_portal)) == before  # Channels' origin check refused it

    # The portal's own origin passes the origin check through nginx: the consumer itself
    # refuses the unknown token (a real console: the end-to-end test).
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(
            url, origin=proxied_portal.origin, cookie=cookie, sslopt=sslopt, timeout=30
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(console_log_lines(proxied_portal)) == before:
        time.sleep(0.1)
    assert "refused: unknown token" in console_log_lines(proxied_portal)[-1]
