"""`manage.py launch_class --module NAME[@VERSION] --students a,b,c [--class NAME] [--wait]
[--wait-ready [--ready-timeout S]] [--start warm|cold] [--json]`: one clone per student,
through the same services as the class dashboard."""

from __future__ import annotations

import json as jsonlib
import time

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from builds.jobs import workers_listening
from builds.management.commands._common import cli_user
from clones import readiness, services, students, warm
from clones.jobs import QUEUE, kind_name
from clones.models import BUSY, Class, Clone, CloneStatus, CloneVM
from clones.runner import run_inline
from jobs.models import Operation, OperationStatus
from ruddervirt.hypervisor.driver import DomainFault
from ruddervirt.runtime import get_hypervisor

FOLLOW_TIMEOUT_S = 1800
READY_TIMEOUT_S = 900  # a class of Debian guests under TCG on a busy host takes minutes
UNCLAIMED_S = 60


class Command(BaseCommand):
    help = (
        "Launch a module version for students: one clone each, in a class (--class, made "
        "when missing) or an ad-hoc one. Students without an account get one (with an "
        "invitation link). With --wait, exit 0 when every clone is running, else 1; without "
        "a worker serving the clones queue, the clones are made in this process. "
        "--wait-ready (implies --wait) also waits until every VM of those clones is ready "
        "(its guest agent or SSH server answers), exit 1 after --ready-timeout."
    )

    def add_arguments(self, parser):
        parser.add_argument("--module", required=True, help="NAME or NAME@VERSION")
        parser.add_argument("--students", required=True, help="comma-separated usernames")
        parser.add_argument("--class", dest="class_name", help="the class (made when missing)")
        parser.add_argument("--full-copy", action="store_true", help="full disk copies")
        parser.add_argument("--wait", action="store_true", help="wait until the clones run")
        parser.add_argument(
            "--wait-ready",
            action="store_true",
            help="also wait until every VM of the clones is ready (implies --wait)",
        )
        parser.add_argument(
            "--ready-timeout",
            type=float,
            default=READY_TIMEOUT_S,
            help=f"seconds --wait-ready waits (default {READY_TIMEOUT_S})",
        )
        parser.add_argument(
            "--start",
            choices=["warm", "cold"],
            help="warm: resume the version's warm image (made first when there is none, its "
            "time reported apart); cold: boot every VM. Default: warm when a warm image exists",
        )
        parser.add_argument("--json", action="store_true", help="end with one JSON object")
        parser.add_argument("--user", help="act as this user (default: the first administrator)")

    def handle(self, *args, module, students, class_name, full_copy, wait, json, user, **opts):
        wait_ready, ready_timeout = opts["wait_ready"], opts["ready_timeout"]
        if ready_timeout <= 0:
            raise CommandError("--ready-timeout must be more than 0 seconds")
        wait = wait or wait_ready
        actor = cli_user(user)
        start = opts["start"]
        try:
            version = services.resolve_version(module, user=actor)
            klass = self.get_class(class_name, version, actor)
            members = self.add_students(klass, students, actor, quiet=json)
            image = self.warm_image(version, actor, quiet=json) if start == "warm" else None
            run_here = wait and workers_listening(QUEUE) == 0
            began = time.monotonic()
            made = services.launch(
                klass, version, by=actor, students=members, full_copy=full_copy,
                queue=not run_here, start=start,
            )  # fmt: skip
        except services.CapacityRefused as exc:
            raise CommandError(f"refused: {exc}") from exc
        except (services.CloneNotAllowed, warm.WarmNotAllowed) as exc:
            raise CommandError(str(exc)) from exc
        if not json:
            self.stdout.write(f"class {klass.pk} ({klass.name}): {len(made)} clone(s) of {version}")
        if wait:
            if run_here:
                if not json:
                    self.stdout.write("no worker serves the clones queue: cloning in this process")
                run_inline([c.pk for c in made], "provision")
            else:
                self.follow([c.pk for c in made])
        not_ready = self.wait_ready([c.pk for c in made], ready_timeout) if wait_ready else []
        launch_s = time.monotonic() - began
        clones = list(Clone.objects.filter(pk__in=[c.pk for c in made]).select_related("student"))
        if json:
            data = {**self.summary(klass, clones), "launch_s": round(launch_s, 1)}
            if image is not None:
                data["warm_image"] = image
            self.stdout.write(jsonlib.dumps(data))
        else:
            for c in clones:
                extra = f": {c.error}" if c.error else ""
                self.stdout.write(f"  clone {c.pk} for {c.student}: {c.status}{extra}")
                if wait_ready:
                    for vm in c.vms.all():
                        self.stdout.write(f"    VM {vm.name}: {readiness.ready_text(vm) or '-'}")
        if wait and not all(c.status == CloneStatus.RUNNING for c in clones):
            raise SystemExit(1)
        if not_ready:
            raise SystemExit(1)

    def wait_ready(self, ids: list[int], timeout: float) -> list[CloneVM]:
        """Probe the clones' VMs until all are ready (readiness.wait_ready); the VMs still not
        ready after `timeout`, named on stderr."""

        def stopped(vm: CloneVM, fault: DomainFault) -> None:
            self.stderr.write(
                f"clone {vm.clone_id} VM {vm.name} ({vm.domain_name}) stopped: {fault.describe()}"
            )

        left = readiness.wait_ready(ids, get_hypervisor(), timeout=timeout, on_fault=stopped)
        if left:
            names = ", ".join(f"clone {vm.clone_id} VM {vm.name} ({vm.domain_name})" for vm in left)
            self.stderr.write(f"not ready after {timeout:g}s: {names}")
        return left

    def warm_image(self, version, actor, *, quiet: bool) -> dict:
        """The version's warm image, made first when it has none: what it is, and the
        seconds this launch spent making it (0 when it was there)."""
        image = warm.ready_image(version)
        waited = 0.0
        if image is None:
            if not quiet:
                self.stdout.write(f"{version} has no warm image: making it first")
            began = time.monotonic()
            image = warm.make_and_wait(version, by=actor)
            waited = time.monotonic() - began
            if not image.is_ready:
                raise CommandError(f"the warm image of {version} failed: {image.error}")
            if not quiet:
                self.stdout.write(f"warm image made in {waited:.1f}s")
        return {**warm.describe(image), "made_now_s": round(waited, 1)}

    def get_class(self, name: str | None, version, actor) -> Class:
        if name is None:
            stamp = timezone.localtime().strftime("%Y-%m-%d %H:%M:%S")
            return services.create_class(name=f"{version} {stamp}", owner=actor, adhoc=True)
        klass = Class.objects.filter(name=name).order_by("pk").first()
        if klass is None:
            return services.create_class(name=name, owner=actor)
        if not services.can_teach(actor, klass):
            raise CommandError(f"class {name!r} belongs to another instructor")
        return klass

    def add_students(self, klass: Class, text: str, actor, *, quiet: bool) -> list:
        result = students.add_students(klass, text, by=actor, mode="link")
        if result.problems:
            raise CommandError("; ".join(result.problems))
        for added in result.added:
            if added.invitation and not quiet:
                self.stdout.write(f"new account {added.user}: invitation {added.invitation}")
        User = get_user_model()
        return list(User.objects.filter(pk__in=[a.user.pk for a in result.added]))

    def follow(self, ids: list[int]) -> None:
        """Wait for the workers. Clones no worker has touched after UNCLAIMED_S (a worker
        that died without unregistering looks alive to RQ for minutes) are made here; the
        claim on each clone keeps a late worker from doing it twice."""
        started = time.monotonic()
        while time.monotonic() - started < FOLLOW_TIMEOUT_S:
            if not Clone.objects.filter(pk__in=ids, status__in=BUSY).exists():
                return
            if time.monotonic() - started > UNCLAIMED_S:
                waiting = Operation.objects.for_model(Clone).filter(
                    kind=kind_name("provision"), status=OperationStatus.QUEUED, target_id__in=ids
                )
                stuck = list(waiting.values_list("target_id", flat=True))
                if stuck:
                    self.stderr.write(f"no worker took {len(stuck)} clone(s): making them here")
                    run_inline(stuck, "provision")
            time.sleep(0.5)

    @staticmethod
    def summary(klass: Class, clones: list[Clone]) -> dict:
        return {
            "class": klass.pk,
            "clones": [
                {
                    "id": c.pk,
                    "student": c.student.get_username(),
                    "status": c.status,
                    **({"error": c.error} if c.error else {}),
                    "vms": services.clone_summary(c)["vms"],
                }
                for c in clones
            ],
        }
