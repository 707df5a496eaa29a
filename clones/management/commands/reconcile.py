from django.core.management.base import BaseCommand

from builds.recovery import reconcile
from clones.reconcile import reconcile_clones
from ruddervirt.runtime import get_hypervisor


class Command(BaseCommand):
    help = (
        "Fail builds whose worker died, and remove domains, networks and disks left behind; "
        "make clone records agree with libvirt, apply clone expiry and inactivity shutdown."
    )

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, quiet: bool, **options):
        hv = get_hypervisor()
        actions = reconcile(hv)
        actions += reconcile_clones(hv)
        if not quiet or actions:
            for line in actions or ["nothing to do"]:
                self.stdout.write(line)
