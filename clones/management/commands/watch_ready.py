"""`manage.py watch_ready [--every S] [--once]`: record when clone VMs become ready.

scripts/run.sh runs it beside the portal: a probe pass (clones.readiness.probe_pass) every
couple of seconds, so a VM's ready time is known to about that. A pass with nothing to
probe is one query."""

from __future__ import annotations

import logging
import time

from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections

from clones.readiness import probe_pass
from ruddervirt.runtime import get_hypervisor

DEFAULT_EVERY_S = 2.0
log = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Probe the running VMs of Running clones that are not ready yet (guest agent, else "
        "the SSH banner) and record when each became ready; repeat every --every seconds."
    )

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=DEFAULT_EVERY_S, help="seconds")
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, every: float, once: bool, **options):
        if every <= 0:
            raise CommandError("--every must be more than 0 seconds")
        hv = get_hypervisor()
        while True:
            began = time.monotonic()
            close_old_connections()
            try:
                lines = probe_pass(hv)
            except Exception:  # a database or libvirt hiccup: the next pass tries again
                log.exception("probe pass failed")
                lines = []
            for line in lines:
                self.stdout.write(line)
            if once:
                return
            time.sleep(max(0.0, every - (time.monotonic() - began)))
