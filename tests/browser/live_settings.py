"""Settings of the portal `live_portal` starts: production settings, plus static files
served straight from the apps and node_modules (no collectstatic before each test run)."""

from ruddervirt.settings import *  # noqa: F403

WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
