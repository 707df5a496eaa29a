from django.core.management.base import BaseCommand

from builds.management.commands._common import dumps, get_build
from builds.services import build_summary


class Command(BaseCommand):
    help = "Show a build's status, per-VM phases and per-step statuses."

    def add_arguments(self, parser):
        parser.add_argument("build_id", type=int)
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, build_id: int, json: bool, **options):
        data = build_summary(get_build(build_id), detail=True)
        if json:
            self.stdout.write(dumps(data))
            return
        version = f" -> {data['module']}@{data['version']}" if data["version"] else ""
        duration = f", {data['duration_s']:.0f}s" if data["duration_s"] is not None else ""
        self.stdout.write(
            f"build {data['build']} of {data['module']}: {data['status']}{version}{duration}"
        )
        if data.get("error"):
            self.stdout.write(f"  error: {data['error']}")
        for vm in data["vms"]:
            self.stdout.write(
                f"  {vm['name']}: {vm['phase']}{' - ' + vm['message'] if vm['message'] else ''}"
            )
            for i, step in enumerate(vm["steps"], 1):
                extra = f" (exit {step['exit_code']})" if step["exit_code"] not in (None, 0) else ""
                self.stdout.write(
                    f"    {i}. {step['name']} [{step['type']}]: {step['status']}{extra}"
                )
