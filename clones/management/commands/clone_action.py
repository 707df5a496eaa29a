"""`manage.py clone_action ID start|stop|restart|reprovision|delete`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from builds.management.commands._common import cli_user
from clones import services
from clones.models import Clone, CloneStatus
from clones.runner import execute

WANTED = {
    "start": CloneStatus.RUNNING,
    "restart": CloneStatus.RUNNING,
    "reprovision": CloneStatus.RUNNING,
    "stop": CloneStatus.STOPPED,
}


class Command(BaseCommand):
    help = (
        "Start, stop, restart, reprovision or delete a clone, in this process (no worker "
        "needed). Exit 0 when it ends where the action leads (delete: the clone is gone)."
    )

    def add_arguments(self, parser):
        parser.add_argument("clone_id", type=int)
        parser.add_argument("action", choices=services.ACTIONS)
        parser.add_argument("--vm", help="only this VM (start, stop, restart)")
        parser.add_argument("--user", help="act as this user (default: the first administrator)")

    def handle(self, *args, clone_id: int, action: str, vm: str | None, user: str | None, **o):
        clone = Clone.objects.select_related("klass").filter(pk=clone_id).first()
        if clone is None:
            raise CommandError(f"no clone {clone_id}")
        try:
            services.request_action(clone, action, user=cli_user(user), vm=vm, queue=False)
        except services.CloneNotAllowed as exc:
            raise CommandError(str(exc)) from exc
        after = execute(clone_id, action, vm=vm)
        if after is None:
            self.stdout.write(f"clone {clone_id}: deleted")
            return
        extra = f": {after.error}" if after.error else ""
        self.stdout.write(f"clone {clone_id}: {after.status}{extra}")
        if action == "delete" or after.status != WANTED[action]:
            raise SystemExit(1)
