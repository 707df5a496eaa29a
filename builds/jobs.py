"""The build job's queue and its limits (jobs.runner runs it: kind "build")."""

from __future__ import annotations

import socket

import django_rq
from rq import Worker

from builds.models import Build
from ruddervirt.runtime import process_alive

QUEUE = "builds"  # served by build workers only (scripts/run.sh), never by clone workers


def workers_listening(queue_name: str = QUEUE) -> int:
    """How many live RQ workers serve `queue_name` (0 when Redis is unreachable).

    A worker that was killed stays registered in Redis until its key expires (minutes):
    workers on this host are counted only while their process is alive."""
    try:
        queue = django_rq.get_queue(queue_name)
        workers = Worker.all(queue=queue)
    except Exception:
        return 0
    host = socket.gethostname()
    return sum(1 for w in workers if w.hostname != host or process_alive(w.pid))


def job_timeout_for(build: Build) -> int:
    """RQ's limit for the job: every attempt's build timeout, and a margin for cleanup."""
    return int(build.timeout_s * (build.retries + 1)) + 900
