"""`manage.py set_rubric MODULE rubric.yaml [--user NAME]`: give a module a new rubric
revision from a file (validated as on the rubric page; errors with path and line)."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from modules.models import Module
from modules.rubrics import RubricRejected, save_rubric
from ruddervirt import rubric


class Command(BaseCommand):
    help = "Save a rubric file as the module's newest rubric revision; exit 1 when invalid."

    def add_arguments(self, parser):
        parser.add_argument("module", help="the module's name")
        parser.add_argument("path", help="the rubric (YAML)")
        parser.add_argument("--user", help="saved by this user (default: the module's owner)")

    def handle(self, *args, module: str, path: str, user: str | None, **options) -> None:
        found = Module.objects.select_related("owner").filter(name=module).first()
        if found is None:
            raise CommandError(f"no module {module!r}")
        by = found.owner
        if user:
            by = get_user_model().objects.filter(username=user).first()
            if by is None:
                raise CommandError(f"no user {user!r}")
        file = Path(path)
        try:
            if not file.is_file() or file.stat().st_size > rubric.MAX_BYTES:
                raise CommandError(f"{path}: not a file of at most {rubric.MAX_BYTES} bytes")
            text = file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path}: {exc}") from exc
        try:
            saved = save_rubric(module=found, text=text, user=by)
        except RubricRejected as exc:
            for problem in exc.result.errors:
                self.stderr.write(f"{path}: error: {problem}")
            raise SystemExit(1) from None
        for problem in saved.warnings:
            self.stderr.write(f"{path}: warning: {problem}")
        what = "saved as" if saved.created else "unchanged: already"
        self.stdout.write(f"rubric of {found.name} {what} revision {saved.revision.number}")
