import sys

from django.core.management.base import BaseCommand

from ruddervirt.health import run_checks


class Command(BaseCommand):
    help = (
        "Check every dependency: the database, Redis, libvirtd, the declared programs, the "
        "storage root, and whether KVM actually runs a guest (a tiny probe guest, a few "
        "seconds). Exits 1 when a check fails (a warning does not count)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-kvm-probe", action="store_true", help="skip booting the KVM probe guest"
        )

    def handle(self, *args, no_kvm_probe: bool, **options):
        results = run_checks(with_kvm=not no_kvm_probe)
        for check in results:
            label = "ok" if check.ok else ("warn" if check.warning else "FAIL")
            self.stdout.write(f"{label:<5} {check.name:<9} {check.message}")
        failed = [c.name for c in results if not c.ok and not c.warning]
        if failed:
            self.stderr.write(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}")
            sys.exit(1)
        self.stdout.write("doctor: everything answers")
