"""Browser tests: a real portal (daphne, ASGI) and a headless Chromium per test.

The fixtures live in tests/browser/live.py so other folders can import them too."""

from tests.browser.live import browser, live_portal  # noqa: F401
