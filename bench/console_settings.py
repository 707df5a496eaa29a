"""Settings of the portal the console benchmark starts: the production settings plus a
"bench" console kind whose targets are loopback VNC ports (see bench/console_targets.py).
Never used outside the benchmark."""

from consoles.registry import DEFAULT_KINDS
from ruddervirt.settings import *  # noqa: F403

RUDDERVIRT_CONSOLE_KINDS = {**DEFAULT_KINDS, "bench": "bench.console_targets"}
