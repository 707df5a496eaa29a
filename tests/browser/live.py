"""A real portal for tests that need WebSockets or a browser, and a headless Chromium.

pytest-django's `live_server` is WSGI-only; consoles need ASGI. `live_portal` runs the
production stack (daphne + ruddervirt.asgi) in a subprocess on a random loopback port,
against the test database file, so rows a `transaction=True` test commits are what the
portal sees, and sessions the test creates log the portal's visitors in.

Reuse from any test folder by importing the fixtures into the test module:

    from tests.browser.live import browser, live_portal  # noqa: F401

    @pytest.mark.django_db(transaction=True)
    def test_x(live_portal, browser, instructor):
        live_portal.login(browser, instructor)
        browser.get(live_portal.url("/dashboard/"))

Only loopback is used: daphne binds 127.0.0.1 and Chromium runs with no background
networking; its profile is a fresh folder per test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1366,900",
)
START_TIMEOUT_S = 60
LISTENING = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")


class LivePortal:
    """daphne serving ruddervirt.asgi on 127.0.0.1:<random port> for the test database."""

    def __init__(self, database: str, log_dir: Path) -> None:
        self.database = database
        self.log_path = log_dir / "daphne.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=f"sqlite:///{self.database}",
            # Sessions the test creates must decode in the portal.
            DJANGO_SECRET_KEY=settings.SECRET_KEY,
            # The test run's own domain prefix (tests/conftest.py sets it per run).
            RUDDERVIRT_NAME_PREFIX=settings.RUDDERVIRT_NAME_PREFIX,
            RUDDERVIRT_DOMAIN_TYPE=settings.RUDDERVIRT_DOMAIN_TYPE,
            RUDDERVIRT_LIBVIRT_URI=settings.RUDDERVIRT_LIBVIRT_URI,
            DJANGO_SETTINGS_MODULE="tests.browser.live_settings",
            # Open consoles re-check their user's access every second, not every 30 s.
            RUDDERVIRT_CONSOLE_RECHECK_S="1",
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        env.pop("DJANGO_DEBUG", None)
        return env

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "daphne",
            "-e",
            "tcp:port=0:interface=127.0.0.1",
            "ruddervirt.asgi:application",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )
        self.port = self._wait_for_port()
        self._wait_healthy()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                return int(found.group(1))
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("daphne did not start:\n" + self.log_tail())

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("/healthz"), timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the portal never answered /healthz:\n" + self.log_tail())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    # --- logging people in ---------------------------------------------------------------
    def session_cookie(self, user) -> str:
        """A session id that logs `user` in (created in the shared test database)."""
        client = Client()
        client.force_login(user)
        return client.cookies[settings.SESSION_COOKIE_NAME].value

    def login(self, driver, user) -> None:
        """Log the browser in as `user` (it must be on some page of the portal first)."""
        driver.get(self.url("/healthz"))
        driver.delete_all_cookies()
        driver.add_cookie(
            {"name": settings.SESSION_COOKIE_NAME, "value": self.session_cookie(user), "path": "/"}
        )


def start_chromium(profile: Path, *flags: str):
    """A headless Chromium driven by Debian's chromedriver, with a profile of its own (and
    `flags` besides CHROMIUM_FLAGS)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, *flags):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="session")
def live_portal(django_db_setup, django_db_blocker) -> Iterator[LivePortal]:
    """The portal over HTTP and WebSockets, for the whole session (tests that use it must
    be `transaction=True`, or the portal cannot see their rows)."""
    from django.db import connection

    with django_db_blocker.unblock():
        database = connection.settings_dict["NAME"]
    if connection.vendor != "sqlite" or not Path(str(database)).is_absolute():
        pytest.skip("the live portal needs the file-backed SQLite test database")
    with tempfile.TemporaryDirectory(prefix="rv-live-") as folder:
        portal = LivePortal(str(database), Path(folder))
        portal.start()
        try:
            yield portal
        finally:
            portal.stop()


@pytest.fixture
def browser(tmp_path) -> Iterator:
    """A fresh headless Chromium (new profile) per test; quits afterwards."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    driver = start_chromium(profile)
    try:
        yield driver
    finally:
        driver.quit()
