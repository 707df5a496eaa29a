"""RQ jobs for clones: thin, they take ids."""

from __future__ import annotations

from django_rq import job

QUEUE = "clones"  # served by clone workers only (scripts/run.sh): builds never delay a clone


@job(QUEUE, timeout=1800)
def run_clone_job(clone_id: int, action: str, vm: str | None = None) -> str:
    from clones.runner import execute

    clone = execute(clone_id, action, vm=vm)
    return clone.status if clone is not None else "Deleted"
