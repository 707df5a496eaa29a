"""A build running in the background of a test, as a worker would run it, and waiting on a
browser with a useful failure message."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.support.ui import WebDriverWait

from builds.models import Build, BuildStep
from builds.runner import execute_build
from tests.browser.screens import diagnosis


class BuildInBackground:
    """execute_build in a thread, as a worker would run it."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            execute_build(self.build.pk)
        finally:
            connection.close()

    def step(self, name: str) -> BuildStep:
        return BuildStep.objects.get(vm__build=self.build, name=name)

    def wait_for_step(self, name: str, status: str, timeout: float) -> BuildStep:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            step = self.step(name)
            if step.status == status:
                return step
            if not self.thread.is_alive():
                break
            time.sleep(0.1)
        self.build.refresh_from_db()
        why = f"{self.build.status}: {self.build.error}"
        pytest.fail(f"step {name!r} never became {status} ({why})")

    def finish(self, timeout: float = 600) -> Build:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the build did not finish"
        self.build.refresh_from_db()
        return self.build


# What Chrome says when an element it just found is swapped out by a navigation in flight:
# selenium maps it to no specific exception, so it is recognised by its message.
_NODE_LEFT_THE_DOCUMENT = "does not belong to the document"


def _tolerating_navigation(condition):
    def attempt(driver):
        try:
            return condition(driver)
        except WebDriverException as error:
            if _NODE_LEFT_THE_DOCUMENT in (error.msg or ""):
                return False
            raise

    return attempt


def until(driver, condition, timeout: float, what: str, portal=None):
    try:
        # A form post reloads the page: an element found just before is stale, not missing,
        # and one found while the new document replaces the old belongs to neither.
        waiting = WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.25,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        return waiting.until(_tolerating_navigation(condition))
    except TimeoutException:
        pytest.fail(f"{what}\n" + diagnosis(driver, portal))


@pytest.fixture
def in_background():
    """Start builds in the background; a test that ends (or fails) with one still running
    cancels it and waits for its cleanup, so the host checks that follow see a quiet host."""
    started: list[BuildInBackground] = []

    def start(build: Build) -> BuildInBackground:
        running = BuildInBackground(build)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            Build.objects.filter(pk=running.build.pk).update(cancel_requested=True)
            running.thread.join(timeout=180)
