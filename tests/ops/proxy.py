"""The portal behind a real nginx on loopback, over HTTPS, as docs/operations.md sets it up.

`proxied_portal` starts daphne (tests.browser.live's LivePortal, against the test database)
with the production settings of deploy/ruddervirt.env, and Debian's nginx with the site of
deploy/nginx/ruddervirt.conf as `manage.py nginx_config` fills it in, a self-signed
certificate for 127.0.0.1, on two free high ports, with its own prefix, configuration, pid
file, logs and temporary folders in a tmp folder. nginx runs in the foreground as the
fixture's child, started with a timeout and stopped after.

Import the fixture into a test module:  from tests.ops.proxy import proxied_portal  # noqa
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.conf import settings

from ruddervirt import proc, proxyconf
from tests.browser.live import LivePortal

ROOT = Path(__file__).resolve().parents[2]
ENV_FILE = ROOT / "deploy" / "ruddervirt.env"
NGINX = "nginx"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
HOST = "127.0.0.1"


def deploy_environment(path: Path = ENV_FILE) -> dict[str, str]:
    """The NAME=value lines of deploy/ruddervirt.env (comments and blank lines skipped)."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"{path}:{number}: expected NAME=value, got {line!r}")
        values[name] = value
    return values


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/tmp/body;
    proxy_temp_path {folder}/tmp/proxy;
    fastcgi_temp_path {folder}/tmp/fastcgi;
    uwsgi_temp_path {folder}/tmp/uwsgi;
    scgi_temp_path {folder}/tmp/scgi;
    include {folder}/ruddervirt.conf;
}}
"""


class Nginx:
    """Debian's nginx with the shipped site, in `folder` (nothing of /etc/nginx is read)."""

    def __init__(self, folder: Path, site: proxyconf.Site) -> None:
        self.folder = folder
        self.site = site
        self.process: subprocess.Popen | None = None
        (folder / "tmp").mkdir(parents=True, exist_ok=True)
        (folder / "ruddervirt.conf").write_text(proxyconf.render(site))
        self.conf = folder / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(folder=folder))

    def argv(self, *extra: str) -> list[str]:
        return [
            NGINX,
            "-p",
            str(self.folder),
            "-c",
            str(self.conf),
            "-e",
            str(self.folder / "error.log"),
            *extra,
        ]

    def test_config(self) -> str:
        """`nginx -t` on the configuration (CommandFailed with nginx's complaint)."""
        return proc.run(self.argv("-t"), timeout=STOP_TIMEOUT_S).stderr.decode()

    def start(self) -> None:
        self.test_config()
        self.process = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((HOST, self.site.https_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {START_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: nginx's fast shutdown, workers included
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.folder / "error.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class ProxiedPortal(LivePortal):
    """daphne with deploy/ruddervirt.env's settings (names and ports made this test's)."""

    def __init__(self, database: str, log_dir: Path, https_port: int) -> None:
        super().__init__(database, log_dir)
        self.https_port = https_port
        self.http_port = 0
        self.nginx: Nginx | None = None

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env.update(deploy_environment())
        env.update(
            DJANGO_ALLOWED_HOSTS=HOST,  # the test's server name
            RUDDERVIRT_DOMAIN_TYPE=settings.RUDDERVIRT_DOMAIN_TYPE,  # TCG on test machines
        )
        return env

    @property
    def origin(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    def https(self, path: str) -> str:
        return self.origin + path

    def wss(self, path: str) -> str:
        return f"wss://{HOST}:{self.https_port}{path}"

    @property
    def certificate(self) -> Path:
        assert self.nginx is not None
        return self.nginx.site.certificate

    def session(self) -> requests.Session:
        """A client that trusts the test's certificate and, like a browser, sends its Origin
        (Django's CSRF check of an HTTPS POST wants it, or a same-origin Referer)."""
        http = requests.Session()
        # Not the environment's: REQUESTS_CA_BUNDLE would replace `verify`, and a proxy
        # variable would send loopback requests elsewhere.
        http.trust_env = False
        http.verify = str(self.certificate)
        http.headers.update(Origin=self.origin, Referer=self.https("/"))
        return http

    def log_in(self, username: str, password: str) -> tuple[requests.Session, requests.Response]:
        """Log in through the login form over HTTPS: its page, then a POST with the form's
        CSRF token. Returns the session and the login's answer (302 when it worked)."""
        http = self.session()
        page = http.get(self.https("/login/"), timeout=30)
        page.raise_for_status()
        answer = http.post(
            self.https("/login/"),
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": http.cookies["csrftoken"],
            },
            allow_redirects=False,
            timeout=30,
        )
        return http, answer


@pytest.fixture(scope="module")
def proxied_portal(django_db_setup, django_db_blocker) -> Iterator[ProxiedPortal]:
    """The portal at https://127.0.0.1:<port> through nginx (tests that use it must be
    `transaction=True`, or the portal cannot see their rows)."""
    from django.db import connection

    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    if connection.vendor != "sqlite" or not Path(str(database)).is_absolute():
        pytest.skip("the live portal needs the file-backed SQLite test database")
    with tempfile.TemporaryDirectory(prefix="rv-proxy-") as name:
        folder = Path(name)
        folder.chmod(0o711)  # nginx's workers (www-data) reach their temporary folders
        portal = ProxiedPortal(str(database), folder, https_port=free_port())
        portal.start()
        try:
            site = proxyconf.Site(
                server_name=HOST,
                certificate=folder / "tls" / "portal.crt",
                certificate_key=folder / "tls" / "portal.key",
                upstream=f"{HOST}:{portal.port}",
                https_listen=f"{HOST}:{portal.https_port}",
                http_listen=f"{HOST}:{free_port()}",
            )
            proxyconf.self_signed(HOST, site.certificate, site.certificate_key, days=2)
            portal.http_port = int(site.http_listen.rsplit(":", 1)[1])
            portal.nginx = Nginx(folder / "nginx", site)
            portal.nginx.start()
            yield portal
        finally:
            if portal.nginx is not None:
                portal.nginx.stop()
            portal.stop()
