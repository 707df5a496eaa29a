"""`manage.py grade CLASS [--json] [--no-run] [--user NAME]`: run a class's checks in every
clone (in this process, waiting for them) and print the gradebook; with --no-run, print the
newest stored results only. CLASS is the class's id or name."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from builds.management.commands._common import cli_user
from clones import grading
from clones.models import Class


class Command(BaseCommand):
    help = (
        "Run the checks of a class's rubric in every student's clone and print the "
        'gradebook; --json prints {"class", "students": [{"student", "clone", "score", '
        '"max", "checks": [{"name", "passed", "points", "output"}]}]}.'
    )

    def add_arguments(self, parser):
        parser.add_argument("klass", metavar="CLASS", help="the class's id or name")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--no-run", action="store_true", help="print stored results only")
        parser.add_argument("--user", help="act as this user (default: the class's owner)")

    def handle(self, *args, klass: str, json: bool, no_run: bool, user, **options) -> None:
        found = _find_class(klass)
        if not no_run:
            clones = list(found.clones.select_related("version__module").order_by("pk"))
            try:
                by = cli_user(user) if user else found.owner
                runs = grading.request_grading(clones, by=by, queue=False)
            except grading.GradingRefused as exc:
                raise CommandError(str(exc)) from exc
            grading.run_now(runs)
        book = grading.gradebook(found)
        if json:
            self.stdout.write(_dumps(grading.grade_json(found, book)))
            return
        for row in book.rows:
            score = f"{row.run.score}/{row.run.max_score}" if row.run else "not checked"
            passed = [name for name, cell in row.columns if cell and cell.passed]
            self.stdout.write(f"{row.student} (clone {row.clone.pk}): {score}  passed: {passed}")


def _find_class(ref: str) -> Class:
    found = Class.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    found = found or Class.objects.filter(name=ref).order_by("-pk").first()
    if found is None:
        raise CommandError(f"no class {ref!r}")
    return found


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2)
