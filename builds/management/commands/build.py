"""`manage.py build PATH [--module NAME] [--wait] [--json]`: submit a manifest and build it;
`manage.py build --resume BUILD_ID [PATH]`: resume a failed build (with the edited manifest
at PATH, if given); `--keep-failed-vm[=DURATION]`: keep the VM that fails running."""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from builds import kept, runner, services
from builds.jobs import workers_listening
from builds.management.commands._common import cli_user, dumps, get_build
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
        parser.add_argument(
            "path", nargs="?", help="the manifest (with --resume: an edited manifest, optional)"
        )
        parser.add_argument(
            "--resume",
            type=int,
            metavar="BUILD_ID",
            help="resume this failed or cancelled build from the last good step of each VM",
        )
        parser.add_argument(
            "--keep-failed-vm",
            nargs="?",
            const="",
            default=None,
            metavar="DURATION",
            help="on failure keep the failed VM running with its console for DURATION (e.g. "
            "30m; default RUDDERVIRT_FAILED_VM_KEEP_S, at most RUDDERVIRT_FAILED_VM_KEEP_MAX_S)",
        )
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
        path: str | None,
        module: str | None,
        wait: bool,
        json: bool,
        user: str | None,
        no_cache: bool = False,
        resume: int | None = None,
        keep_failed_vm: str | None = None,
        **opts,
    ):
        keep = self.keep(keep_failed_vm)
        actor = cli_user(user)
        run_here = wait and workers_listening() == 0
        try:
            if resume is not None:
                build = self.resume(resume, path, module, no_cache, actor, keep, queue=not run_here)
            else:
                build = self.submit(path, module, no_cache, actor, keep, queue=not run_here)
        except ManifestRejected as exc:
            for problem in exc.result.errors:
                where = f"{path}:{problem.line}:{problem.column}"
                self.stderr.write(f"{where}: error: {problem.path}: {problem.message}")
            raise SystemExit(1) from exc
        except ModuleNameTaken as exc:
            raise CommandError(f"module {exc} exists already") from exc
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
            for line in BuildLogLine.objects.filter(build=build).order_by("seq"):
                # What was logged at submit (a resume's note) before the run's own lines.
                self.echo(format_line(line.created_at, line.vm, line.stream, line.text))
            build = self.run_here(build)
            kept_lines = BuildLogLine.objects.filter(build=build, text__startswith="the failed VM ")
            for line in kept_lines.order_by("seq"):  # logged once the run was over
                self.echo(format_line(line.created_at, line.vm, line.stream, line.text))
        else:
            build = self.follow(build)
        if json:
            self.stdout.write(dumps(services.build_summary(build)))
        raise SystemExit(0 if build.status == BuildStatus.SUCCEEDED else 1)

    def keep(self, value: str | None) -> int:
        if value is None:
            return 0
        try:
            return kept.keep_seconds(value)
        except kept.KeepRefused as exc:
            raise CommandError(f"--keep-failed-vm: {exc}") from exc

    def submit(
        self, path: str | None, module: str | None, no_cache: bool, actor, keep: int, *, queue
    ) -> Build:
        if path is None:
            raise CommandError("give the manifest's PATH (or --resume BUILD_ID)")
        text = self.read(Path(path))
        name = module or Path(path).stem
        try:
            dns_label(name)
        except Exception as exc:
            raise CommandError(f"module name {name!r} is not a DNS label; pass --module") from exc
        return services.submit_manifest(
            text=text,
            module_name=name,
            user=actor,
            queue=queue,
            use_cache=not no_cache,
            keep_failed_vm_s=keep,
        )

    def resume(
        self, build_id: int, path: str | None, module: str | None, no_cache: bool, actor, keep,
        *, queue,
    ) -> Build:  # fmt: skip
        if module:
            raise CommandError("--module does not go with --resume: a resume builds its module")
        if no_cache:
            raise CommandError(
                "--no-cache does not go with --resume: a resume reuses the failed build's "
                "good steps (build the manifest without --resume to run every step)"
            )
        failed = get_build(build_id)
        text = self.read(Path(path)) if path is not None else None
        return services.resume_build(
            failed, user=actor, text=text, queue=queue, keep_failed_vm_s=keep
        )

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
