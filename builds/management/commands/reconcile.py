from django.core.management.base import BaseCommand

from builds.recovery import reconcile
from builds.services import get_hypervisor


class Command(BaseCommand):
    help = "Fail builds whose worker died, and remove domains, networks and disks left behind."

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, quiet: bool, **options):
        actions = reconcile(get_hypervisor())
        if not quiet or actions:
            for line in actions or ["nothing to do"]:
                self.stdout.write(line)
