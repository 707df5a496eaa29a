"""The clone jobs' names, queue and limit (jobs.runner runs them; their bodies are in
clones.runner)."""

from __future__ import annotations

QUEUE = "clones"  # served by clone workers only (scripts/run.sh): builds never delay a clone
KIND_PREFIX = "clone."
JOB_TIMEOUT_S = 1800


def kind_name(action: str) -> str:
    """The job kind (jobs.registry) of a clone action: "clone.<action>"."""
    return KIND_PREFIX + action
