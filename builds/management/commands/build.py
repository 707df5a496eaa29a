"""`manage.py build PATH [--module NAME] [--wait] [--json]`: submit a manifest and build it."""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from builds import runner, services
from builds.jobs import workers_listening
from builds.management.commands._common import cli_user, dumps
from builds.models import Build, BuildLogLine, BuildStatus
from builds.reporting import format_line
from jobs.models import Operation
from modules.models import dns_label
from modules.services import ManifestRejected, ModuleNameTaken

UNCLAIMED_GRACE_S = 30


class Command(BaseCommand):
    help = (
        "Save the manifest at PATH as the module's newest revision and build it. "
        "With --wait, stream the log and exit 0 when the build succeeded, 1 when it did not."
    )

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument(
            "--module", help="module name (default: the file name without extension)"
        )
        parser.add_argument(
            "--wait", action="store_true", help="wait for the build and stream its log"
        )
        parser.add_argument("--json", action="store_true", help="end with one JSON object")
        parser.add_argument("--user", help="act as this user (default: the first administrator)")
        parser.add_argument(
            "--no-cache",
            action="store_true",
            help="run every step: neither reuse nor keep step-cache checkpoints",
        )

    def handle(
        self,
        *args,
        path: str,
        module: str | None,
        wait: bool,
        json: bool,
        user: str | None,
        no_cache: bool = False,
        **opts,
    ):
        text = self.read(Path(path))
        name = module or Path(path).stem
        try:
            dns_label(name)
        except Exception as exc:
            raise CommandError(f"module name {name!r} is not a DNS label; pass --module") from exc
        actor = cli_user(user)
        run_here = wait and workers_listening() == 0
        try:
            build = services.submit_manifest(
                text=text,
                module_name=name,
                user=actor,
                queue=not run_here,
                use_cache=not no_cache,
            )
        except ManifestRejected as exc:
            for problem in exc.result.errors:
                where = f"{path}:{problem.line}:{problem.column}"
                self.stderr.write(f"{where}: error: {problem.path}: {problem.message}")
            raise SystemExit(1) from exc
        except ModuleNameTaken as exc:
            raise CommandError(f"module {name} exists already") from exc
        except services.BuildNotAllowed as exc:
            raise CommandError(str(exc)) from exc
        if not wait:
            self.stdout.write(dumps(services.build_summary(build)) if json else f"build {build.pk}")
            return
        self.stdout.write(f"build {build.pk}")
        self.stdout.flush()
        if run_here:
            self.stdout.write(
                format_line(
                    build.created_at,
                    "",
                    "info",
                    "no worker serves the builds queue: running the build in this process",
                )
            )
            build = self.run_here(build)
        else:
            build = self.follow(build)
        if json:
            self.stdout.write(dumps(services.build_summary(build)))
        raise SystemExit(0 if build.status == BuildStatus.SUCCEEDED else 1)

    def read(self, path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.stderr.write(f"cannot read {path}: {exc}")
            raise SystemExit(2) from exc

    def echo(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()

    def run_here(self, build: Build) -> Build:
        try:
            return runner.execute_build(build.pk, echo=self.echo)
        except KeyboardInterrupt:
            Build.objects.filter(pk=build.pk).update(cancel_requested=True)
            self.stderr.write("interrupted: the build was cancelled and its VMs removed")
            build.refresh_from_db()
            runner.mark_interrupted(build)
            raise SystemExit(1) from None

    def follow(self, build: Build) -> Build:
        after = 0
        started = time.monotonic()
        while True:
            build.refresh_from_db()
            for line in BuildLogLine.objects.filter(build=build, seq__gt=after).order_by("seq"):
                self.echo(format_line(line.created_at, line.vm, line.stream, line.text))
                after = line.seq
            if (
                build.is_terminal
                and not BuildLogLine.objects.filter(build=build, seq__gt=after).exists()
            ):
                return build
            unclaimed = (
                build.status == BuildStatus.PENDING
                and not Operation.objects.for_target(build).running().exists()
            )
            if (
                unclaimed
                and time.monotonic() - started > UNCLAIMED_GRACE_S
                and not workers_listening()
            ):
                self.echo("no worker picked the build up: running it in this process")
                return self.run_here(build)
            time.sleep(0.5)
