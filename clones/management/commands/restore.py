import sys
from pathlib import Path

from django.core.management.base import BaseCommand

from ruddervirt.backup.archive import BackupError
from ruddervirt.backup.restore import restore_backup


class Command(BaseCommand):
    help = (
        "Restore a backup made by `manage.py backup` (a folder or a .tar) onto this host: "
        "every checksum is verified first; the database is loaded and migrated, template "
        "disks go under RUDDERVIRT_STORAGE_ROOT, template domains are defined again and "
        "clones are marked failed (reprovision them). Refuses a database that is not "
        "empty unless --force. Exits 1 when it refuses or fails."
    )

    def add_arguments(self, parser):
        parser.add_argument("src", type=Path, help="the backup folder or .tar")
        parser.add_argument(
            "--force",
            action="store_true",
            help="replace a database that is not empty and files that exist",
        )

    def handle(self, *args, src: Path, force: bool, **options):
        try:
            done = restore_backup(src.absolute(), force=force, echo=self.stdout.write)
        except BackupError as exc:
            self.stderr.write(f"restore: refused: {exc}")
            sys.exit(1)
        counts = ", ".join(f"{what}: {n}" for what, n in done.manifest.counts.items())
        self.stdout.write(
            f"restored the backup of {done.manifest.created_at} ({counts}); "
            f"{len(done.templates)} template domain(s) defined"
        )
