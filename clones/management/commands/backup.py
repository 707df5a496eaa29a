import sys
from pathlib import Path

from django.core.management.base import BaseCommand

from ruddervirt.backup.archive import BackupError
from ruddervirt.backup.make import make_backup


class Command(BaseCommand):
    help = (
        "Back up the database, the secret key and every module version's template disks "
        "(whole qcow2 chains) and NVRAMs to DEST, a new folder or a new .tar file, while "
        "the portal runs. Clone disks, build folders and caches are left out "
        "(docs/operations.md, 'Backup and restore'). Exits 1 when it cannot."
    )

    def add_arguments(self, parser):
        parser.add_argument("dest", type=Path, help="a folder or a .tar file that does not exist")

    def handle(self, *args, dest: Path, **options):
        try:
            make_backup(dest.absolute(), echo=self.stdout.write)
        except BackupError as exc:
            self.stderr.write(f"backup: {exc}")
            sys.exit(1)
