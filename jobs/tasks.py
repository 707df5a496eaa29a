"""The RQ entry point: one function for every kind of job (it takes the operation's id)."""

from __future__ import annotations


def run_operation_job(op_id: int) -> str:
    from jobs.runner import run

    return run(op_id).status
