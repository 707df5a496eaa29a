from django.core.management.base import BaseCommand, CommandError

from builds.management.commands._common import cli_user, get_build
from builds.services import BuildNotAllowed, request_cancel


class Command(BaseCommand):
    help = "Cancel a build: its VMs stop within a few seconds and are removed."

    def add_arguments(self, parser):
        parser.add_argument("build_id", type=int)
        parser.add_argument("--user")

    def handle(self, *args, build_id: int, user: str | None, **options):
        try:
            build = request_cancel(get_build(build_id), user=cli_user(user))
        except BuildNotAllowed as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"build {build.pk}: cancel requested ({build.status})")
