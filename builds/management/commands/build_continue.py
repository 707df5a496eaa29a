from django.core.management.base import BaseCommand, CommandError

from builds.management.commands._common import cli_user, get_build
from builds.services import BuildNotAllowed, decide_handbuild


class Command(BaseCommand):
    help = "Press Continue (or Fail, with --fail REASON) on a build's handbuild step."

    def add_arguments(self, parser):
        parser.add_argument("build_id", type=int)
        parser.add_argument("--vm", help="the VM, when several are waiting")
        parser.add_argument("--fail", metavar="REASON", help="fail the step with this reason")
        parser.add_argument("--user")

    def handle(
        self, *args, build_id: int, vm: str | None, fail: str | None, user: str | None, **options
    ):
        actor = cli_user(user)
        if not actor.is_superuser:
            raise CommandError("build_continue is for administrators")
        decision = "fail" if fail else "continue"
        try:
            step = decide_handbuild(
                get_build(build_id), vm_name=vm, user=actor, decision=decision, reason=fail or ""
            )
        except BuildNotAllowed as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"build {build_id}: {decision} sent to VM {step.vm.name}, "
            f"step {step.index + 1} ({step.name})"
        )
