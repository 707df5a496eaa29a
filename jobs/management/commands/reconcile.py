from django.core.management.base import BaseCommand

from jobs.reconcile import reconcile
from ruddervirt.runtime import get_hypervisor


class Command(BaseCommand):
    help = (
        "Settle runs whose worker died (their build or clone is marked failed), queue lost "
        "runs again, remove domains, networks and disks no live build or clone owns, make "
        "clone records agree with libvirt, apply clone expiry and inactivity shutdown."
    )

    def add_arguments(self, parser):
        parser.add_argument("--quiet", action="store_true")

    def handle(self, *args, quiet: bool, **options):
        actions = reconcile(get_hypervisor())
        if not quiet or actions:
            for line in actions or ["nothing to do"]:
                self.stdout.write(line)
