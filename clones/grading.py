"""Checks of students' work: grading runs of a module's rubric, and the gradebook.

A run checks one clone against its module's rubric in force (modules.RubricRevision): each
check's command runs inside the named VM through the qemu-guest-agent
(Hypervisor.guest_exec), never over a network, and the command comes from the portal's copy
of the rubric, so a student can neither see it nor change it. Every run is a job of kind
"grade" (jobs.runner) on the clones queue with the GradingRun row as its target; the
results are CheckResult rows, read by the gradebook (class page, CSV, `manage.py grade`).
A student sees only names, points and passed/failed of their own clone's runs.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db import transaction
from django.utils import timezone

import jobs.runner as jobs
from clones.models import CheckResult, Class, Clone, CloneVM, GradingRun
from clones.services import can_teach, is_enrolled_student
from jobs.models import Operation, OperationStatus
from jobs.registry import Result
from modules.rubrics import rubric_of
from ruddervirt import rubric as rubrics
from ruddervirt.hypervisor.driver import DomainNotFound, Hypervisor, HypervisorError
from ruddervirt.runtime import get_hypervisor

log = logging.getLogger(__name__)
KIND = "grade"
NO_AGENT = "guest agent not answering"
OUTPUT_KEPT = rubrics.MAX_OUTPUT_BYTES
INLINE_WORKERS = 8


class GradingRefused(Exception):
    """The run cannot be asked for (no rubric, not allowed); says why."""


def job_timeout(run: GradingRun) -> int:
    """RQ's limit: every check's timeout, plus slack for the agent's round trips."""
    return int(sum(c.timeout_s + 10 for c in rubric_of(run.rubric).checks)) + 60


# --- asking ------------------------------------------------------------------------------
def may_check_own_work(user, clone: Clone) -> bool:
    """The clone's own student, when its module's rubric says studentCanRun."""
    revision = clone.version.module.rubric
    return (
        revision is not None
        and is_enrolled_student(user, clone)
        and rubric_of(revision).student_can_run
    )


def request_grading(
    clones: Iterable[Clone], *, by, by_student: bool = False, queue: bool = True
) -> list[GradingRun]:
    """A new run for each clone (its open run instead, when one is queued or running: a
    button pressed twice runs the checks once). Raises GradingRefused when a clone's module
    has no rubric. With `queue` the runs go to the workers when the transaction commits."""
    made = []
    with transaction.atomic():
        for clone in clones:
            revision = clone.version.module.rubric
            if revision is None:
                raise GradingRefused(f"module {clone.version.module.name} has no rubric")
            open_run = clone.grading_runs.filter(finished_at__isnull=True).first()
            if open_run is not None:
                made.append(open_run)
                continue
            run = GradingRun.objects.create(
                clone=clone,
                rubric=revision,
                requested_by=by if getattr(by, "pk", None) else None,
                by_student=by_student,
                max_score=rubric_of(revision).max_score,
            )
            jobs.submit(KIND, run, by=by, queue=queue)
            made.append(run)
    return made


def run_now(runs: Iterable[GradingRun], *, hv: Hypervisor | None = None) -> None:
    """Do the runs' queued jobs in this process, in parallel threads (`manage.py grade`)."""
    ids = list(
        Operation.objects.filter(
            kind=KIND,
            target_id__in=[r.pk for r in runs],
            status=OperationStatus.QUEUED,
        ).values_list("pk", flat=True)
    )
    if ids:
        jobs.run_many(ids, hv=hv or get_hypervisor(), workers=INLINE_WORKERS)


# --- the job -----------------------------------------------------------------------------
def run_job(op: Operation, run: GradingRun, *, hv: Hypervisor | None = None, echo=None) -> Result:
    """The "grade" job: every check of the run's rubric in its clone, in order."""
    run = GradingRun.objects.select_related("clone", "rubric").get(pk=run.pk)
    if run.done:
        return Result(outcome="done", skipped=True)
    hv = hv or get_hypervisor()
    rubric = rubric_of(run.rubric)
    vms = {vm.name: vm for vm in CloneVM.objects.filter(clone=run.clone_id)}
    score = 0
    for index, check in enumerate(rubric.checks):
        result = run_check(check, vms.get(check.vm), hv)
        CheckResult.objects.create(run=run, index=index, **result)
        score += check.points if result["passed"] else 0
    GradingRun.objects.filter(pk=run.pk).update(score=score, finished_at=timezone.now())
    return Result(outcome=f"{score}/{rubric.max_score}")


def run_check(check: rubrics.Check, vm: CloneVM | None, hv: Hypervisor) -> dict:
    """One check's CheckResult fields. Never raises for the guest's side: a VM that is not
    there, or whose agent does not answer, fails the check with the reason as output."""
    fields = {"name": check.name, "vm": check.vm, "points": check.points}
    if vm is None:
        return {**fields, "passed": False, "output": f"the clone has no VM {check.vm!r}"}
    started = time.monotonic()
    try:
        done = hv.guest_exec(
            vm.domain_name, check.argv, timeout_s=check.timeout_s, max_output=OUTPUT_KEPT
        )
    except DomainNotFound:
        return {**fields, "passed": False, "output": f"VM {check.vm!r} is not there"}
    except HypervisorError as exc:
        return {**fields, "passed": False, "output": f"guest agent refused: {exc}"[:OUTPUT_KEPT]}
    elapsed = time.monotonic() - started
    if done is None:
        return {**fields, "passed": False, "output": NO_AGENT, "duration_s": elapsed}
    stdout = done.stdout.decode("utf-8", "replace")
    output = stdout + done.stderr.decode("utf-8", "replace")
    if done.timed_out:
        output += f"\n(timed out after {check.timeout_s:g}s)"
    passed = not done.timed_out and check.passed(done.exit_code, stdout)
    return {
        **fields,
        "passed": passed,
        "exit_code": done.exit_code,
        "output": output,
        "duration_s": elapsed,
    }


def interrupted(run: GradingRun, reason: str) -> str | None:
    """Its worker died: the run ends with the reason (its checks so far are kept)."""
    GradingRun.objects.filter(pk=run.pk, finished_at__isnull=True).update(
        finished_at=timezone.now(), error=reason
    )
    return f"grading run {run.pk}: {reason}"


def unqueued(run: GradingRun, reason: str) -> None:
    interrupted(run, reason)


# --- reading -----------------------------------------------------------------------------
def latest_runs(clones: Iterable[Clone]) -> dict[int, GradingRun]:
    """Each clone's newest finished run, by clone id."""
    ids = [c.pk for c in clones]
    runs = (
        GradingRun.objects.filter(clone__in=ids, finished_at__isnull=False)
        .order_by("clone", "-finished_at", "-pk")
        .prefetch_related("results")
    )
    latest: dict[int, GradingRun] = {}
    for run in runs:
        latest.setdefault(run.clone_id, run)
    return latest


@dataclass
class Row:
    clone: Clone
    run: GradingRun | None
    cells: dict[str, CheckResult]
    # (check name, its result or None), in the gradebook's column order
    columns: list[tuple[str, CheckResult | None]] = field(default_factory=list)

    @property
    def student(self) -> str:
        return self.clone.student.get_username()


@dataclass(frozen=True)
class Gradebook:
    checks: list[str]
    rows: list[Row]
    pending: int  # runs asked for and not finished


def gradebook(klass: Class) -> Gradebook:
    """Students x checks of the class's clones, from each clone's newest finished run."""
    clones = list(klass.clones.select_related("student", "version__module").order_by("pk"))
    latest = latest_runs(clones)
    names: list[str] = []
    rows = []
    for clone in clones:
        run = latest.get(clone.pk)
        cells = {r.name: r for r in run.results.all()} if run else {}
        names += [name for name in cells if name not in names]
        rows.append(Row(clone, run, cells))
    for row in rows:
        row.columns = [(name, row.cells.get(name)) for name in names]
    pending = GradingRun.objects.filter(clone__klass=klass, finished_at__isnull=True).count()
    return Gradebook(names, rows, pending)


def gradebook_csv(book: Gradebook) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["student", "clone", "ran_at", *book.checks, "score", "max"])
    for row in book.rows:
        cells = [
            "" if cell is None else (cell.points if cell.passed else 0) for _, cell in row.columns
        ]
        ran = row.run.finished_at.isoformat(timespec="seconds") if row.run else ""
        score = [row.run.score, row.run.max_score] if row.run else ["", ""]
        writer.writerow([_cell(row.student), row.clone.pk, ran, *cells, *score])
    return out.getvalue()


def _cell(value: str) -> str:
    """A spreadsheet never runs a cell of ours as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def grade_json(klass: Class, book: Gradebook) -> dict:
    return {
        "class": klass.pk,
        "students": [
            {
                "student": row.student,
                "clone": row.clone.pk,
                "score": row.run.score if row.run else 0,
                "max": row.run.max_score if row.run else 0,
                "checks": [
                    {"name": r.name, "passed": r.passed, "points": r.points, "output": r.output}
                    for r in (row.run.results.all() if row.run else [])
                ],
            }
            for row in book.rows
        ],
    }


def student_view(user, clone: Clone) -> dict:
    """What the clone's own student may see of its newest run: names, points, passed; never
    the commands, the output or anyone else's runs."""
    if not is_enrolled_student(user, clone) and not can_teach(user, clone.klass):
        raise PermissionError("not your lab")
    newest = clone.grading_runs.order_by("-created_at", "-pk").first()
    if newest is None:
        return {"state": "none", "checks": []}
    state = "done" if newest.done else "running"
    shown = newest if newest.done else clone.grading_runs.filter(finished_at__isnull=False).first()
    return {
        "state": state,
        "ran_at": shown.finished_at.isoformat(timespec="seconds") if shown else None,
        "score": shown.score if shown else None,
        "max": shown.max_score if shown else None,
        "checks": [
            {"name": r.name, "points": r.points, "passed": r.passed}
            for r in (shown.results.all() if shown else [])
        ],
    }
