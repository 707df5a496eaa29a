"""`manage.py build_cache list|clear [--older-than DURATION] [--json]`: the step cache."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from builds.management.commands._common import dumps
from ruddervirt.engine.stepcache import StepCache
from ruddervirt.manifest.units import parse_duration
from ruddervirt.runtime import engine_config


class Command(BaseCommand):
    help = (
        "List the step cache's checkpoints (least recently used first), or clear them: all, "
        "or those unused for longer than --older-than. Checkpoints a running build uses stay."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "clear"])
        parser.add_argument(
            "--older-than", help="a duration (30m, 12h, 168h): only checkpoints unused that long"
        )
        parser.add_argument("--json", action="store_true", help="one JSON object")

    def handle(self, *args, action: str, older_than: str | None, json: bool, **opts):
        store = StepCache(engine_config().step_cache_dir)
        try:
            age = None if older_than is None else parse_duration(older_than)
        except ValueError as exc:
            raise CommandError(f"--older-than: {exc}") from exc
        if action == "list":
            self.list(store, age, json)
        else:
            removed = store.evict(max_age_s=age, everything=age is None)
            if json:
                self.stdout.write(dumps({"removed": [r.key for r in removed]}))
            else:
                self.stdout.write(f"removed {len(removed)} checkpoint(s)")

    def list(self, store: StepCache, age: float | None, json: bool) -> None:
        now = time.time()
        records = [r for r in store.records() if age is None or now - r.last_used > age]
        if json:
            rows = [
                {
                    "key": r.key,
                    "build": r.build_id,
                    "vm": r.vm,
                    "step": r.step_index + 1,
                    "name": r.step_name,
                    "size": r.size,
                    "created": r.created,
                    "last_used": r.last_used,
                }
                for r in records
            ]
            self.stdout.write(dumps({"checkpoints": rows, "bytes": store.total_size()}))
            return
        for r in records:
            used = datetime.fromtimestamp(r.last_used, UTC).strftime("%Y-%m-%d %H:%M")
            self.stdout.write(
                f"{r.key[:12]}  build #{r.build_id or r.build}  {r.vm} step {r.step_index + 1} "
                f"({r.step_name})  {r.size} bytes  last used {used}"
            )
        self.stdout.write(f"{len(records)} checkpoint(s), {store.total_size()} bytes of layers")
