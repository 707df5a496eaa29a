"""RQ jobs for builds: thin, they take ids."""

from __future__ import annotations

import django_rq
from django_rq import job
from rq import Worker

from builds.models import Build

QUEUE = "builds"


@job(QUEUE, timeout=24 * 3600)
def run_build_job(build_id: int) -> str:
    from builds.services import execute_build

    build = execute_build(build_id)
    return build.status


def workers_listening(queue_name: str = QUEUE) -> int:
    """How many live RQ workers serve `queue_name` (0 when Redis is unreachable)."""
    try:
        queue = django_rq.get_queue(queue_name)
        return len(Worker.all(queue=queue))
    except Exception:
        return 0


def job_timeout_for(build: Build) -> int:
    from ruddervirt.manifest import parse

    manifest = parse(build.manifest_text)
    return int(manifest.timeout * (manifest.retries + 1)) + 900
