"""`manage.py warm_image make|show|drop NAME[@VERSION] [--json] [--user U]`: a version's warm
image (clones.warm), as the version page's buttons."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from builds.management.commands._common import cli_user, dumps
from clones import services, warm
from clones.models import WarmImage
from ruddervirt.capacity import human


class Command(BaseCommand):
    help = (
        "Make a module version's warm image (boot it once, wait until ready, save it: warm "
        "clones resume it), show it, or drop it. make waits until the image is Ready or "
        "Failed (exit 1), in this process when no worker serves the clones queue."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["make", "show", "drop"])
        parser.add_argument("version", help="NAME or NAME@VERSION")
        parser.add_argument("--json", action="store_true", help="one JSON object")
        parser.add_argument("--user", help="act as this user (default: the first administrator)")

    def handle(self, *args, action: str, version: str, json: bool, user: str | None, **opts):
        actor = cli_user(user)
        try:
            found = services.resolve_version(version, user=actor)
        except services.CloneNotAllowed as exc:
            raise CommandError(str(exc)) from exc
        image = WarmImage.objects.filter(version=found).first()
        try:
            if action == "make":
                image = warm.make_and_wait(found, by=actor)
            elif action == "drop":
                if image is None:
                    raise CommandError(f"{found} has no warm image")
                warm.drop(image, by=actor)
                self.stdout.write(dumps({"dropped": image.pk}) if json else f"dropped {image}")
                return
        except warm.WarmNotAllowed as exc:
            raise CommandError(str(exc)) from exc
        if image is None:
            raise CommandError(f"{found} has no warm image")
        self.report(image, json)
        if image.status == "Failed":
            raise SystemExit(1)

    def report(self, image: WarmImage, json: bool) -> None:
        data = warm.describe(image)
        if json:
            self.stdout.write(dumps(data))
            return
        line = f"warm image {image.pk} of {image.version}: {image.status}"
        if image.is_ready:
            line += f", {human(image.size_bytes)}, made in {data['made_in_s']} s"
        self.stdout.write(line + (f": {image.error}" if image.error else ""))
