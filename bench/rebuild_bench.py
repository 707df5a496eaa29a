#!/usr/bin/env python3
"""Step-cache benchmark: a full build, then a rebuild after changing only the last step.

    .venv/bin/python bench/rebuild_bench.py [--image tiny|debian] [--runs N] [--markdown]
        [--wait-quiet MINUTES]

The recipe is the build benchmark's (bench/build_recipe.py: boot, a shell step, a 1 MiB
upload, a sha256sum step, generalize, shutdown, capture), built through the portal
(``submit_manifest`` + ``execute_build``) with the step cache on. Each run:

1. builds the recipe with a first step unique to the run, so nothing of an earlier run is
   reused (the cache is cold for this manifest: every step runs and is checkpointed);
2. builds it again with only the last step changed: the first two steps are reused from (1)
   and the VM starts from their checkpoint.

The table gives the median of each figure; "rebuild - changed step" is what the rebuild
costs beyond the step that changed (issue 15's aim: at most 2 s of engine work). The phases
of the rebuild split that figure: the VM booting from the checkpoint, generalizing,
shutting down and capturing, and the engine's own work in between.

Everything lives in a temporary folder and under a libvirt name prefix of its own, removed
at the end (bench/build_bench.py's Bench does the setup and cleanup).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.build_bench import Bench, machine_facts, run_bench  # noqa: E402
from bench.build_phases import GENERALIZING  # noqa: E402
from bench.build_recipe import GUESTS, manifest_text  # noqa: E402
from bench.build_timing import Event  # noqa: E402

LAST_STEP = 2  # the index of the recipe's last step (0-based, as the reporter's events)
# (key, label) in table order; indented labels split the row above them.
ROWS: tuple[tuple[str, str], ...] = (
    ("full", "full build (cold cache: every step runs and is checkpointed)"),
    ("rebuild", "rebuild after changing the last step"),
    ("step", "  the changed step (host view)"),
    ("beyond", "  rebuild - changed step"),
    ("prepare", "    prepare (cache lookup, overlay on the checkpoint, seed, define)"),
    ("boot", "    VM start → SSH session (booting from the checkpoint)"),
    ("handover", "    SSH session → the changed step (reused steps recorded)"),
    ("generalize", "    generalizing for clones (after the last step)"),
    ("shutdown", "    shutdown"),
    ("capture", "    capture and finish (templates, version)"),
    ("engine", "    engine work = beyond - boot - generalize - shutdown"),
    ("saved", "time saved by the reuse (full - rebuild)"),
)


@dataclass
class RunResult:
    index: int
    load1: float
    figures: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # the rebuild's reused steps


def with_first_step_marker(text: str, index: int) -> str:
    """The recipe with an extra line in its first step: a manifest no earlier run built."""
    needle = "          inline: |\n"
    head, sep, tail = text.partition(needle)
    return f"{head}{sep}            echo rebuild-bench-run-{index}\n{tail}"


def with_last_step_changed(text: str) -> str:
    """The recipe with its last step changed (one more command before its marker line)."""
    head, sep, tail = text.rpartition('            echo "RVBENCH step=3')
    return f'{head}            echo "the last step, changed"\n{sep}{tail}'


def _first(events: list[Event], kind: str, text: str, after: float = 0.0) -> float:
    for event in events:
        if event.t >= after and event.kind == kind and event.text.startswith(text):
            return event.t
    raise ValueError(f"no {kind} event {text!r} after {after}")


def _first_log(events: list[Event], needle: str, after: float) -> float:
    for event in events:
        if event.t >= after and event.kind == "log" and needle in event.text:
            return event.t
    raise ValueError(f"no log line with {needle!r}")


def rebuild_phases(events: list[Event], start: float, end: float) -> dict[str, float]:
    """Cut the rebuild at its instants (host monotonic clock), in the order they happen."""
    boot = [e.t for e in events if e.kind == "vm_domain"][-1]
    ssh = _first_log(events, "SSH is up", boot)
    step_start = _first(events, "step_started", str(LAST_STEP), ssh)
    step_end = _first(events, "step_finished", str(LAST_STEP), step_start)
    halt = _first(events, "vm_phase", "ShuttingDown", step_end)
    try:
        generalize = _first_log(events, GENERALIZING, step_end)
    except ValueError:
        generalize = halt
    try:
        off = _first_log(events, "the guest powered off", halt)
    except ValueError:
        off = _first(events, "build_phase", "CapturingDisks", halt)
    figures = {
        "rebuild": end - start,
        "step": step_end - step_start,
        "prepare": boot - start,
        "boot": ssh - boot,
        "handover": step_start - ssh,
        "generalize": halt - generalize,
        "shutdown": off - halt,
        "capture": end - off,
    }
    figures["beyond"] = figures["rebuild"] - figures["step"]
    figures["engine"] = (
        figures["beyond"] - figures["boot"] - figures["generalize"] - figures["shutdown"]
    )
    return figures


class RebuildBench(Bench):
    def run_all(self) -> None:  # type: ignore[override]
        from bench import build_rudder

        self.results: list[RunResult] = []
        base = manifest_text(self.recipe)
        for index in range(1, self.args.runs + 1):
            result = RunResult(index, os.getloadavg()[0])
            first = with_first_step_marker(base, index)
            full = build_rudder.run_portal(first, self.user, echo=self.echo, use_cache=True)
            result.figures["full"] = full.end - full.start
            again = build_rudder.run_portal(
                with_last_step_changed(first), self.user, echo=self.echo, use_cache=True
            )
            result.figures.update(rebuild_phases(again.events, again.start, again.end))
            result.figures["saved"] = result.figures["full"] - result.figures["rebuild"]
            result.reused = _reused_steps(again.build)
            if len(result.reused) != LAST_STEP:
                raise RuntimeError(
                    f"run {index}: the rebuild reused {result.reused}, not the first "
                    f"{LAST_STEP} steps"
                )
            self.results.append(result)
            print(
                f"run {index}: full {result.figures['full']:.2f}s, rebuild "
                f"{result.figures['rebuild']:.2f}s (step {result.figures['step']:.2f}s, "
                f"reused {', '.join(result.reused)})",
                file=sys.stderr,
            )

    def report(self, command: str) -> str:
        rows = []
        for key, label in ROWS:
            values = [r.figures[key] for r in self.results]
            rows.append((label, statistics.median(values), min(values), max(values)))
        if not self.args.markdown:
            return "\n".join(
                f"{label:<68} {med:8.2f} {low:8.2f} {high:8.2f}" for label, med, low, high in rows
            )
        guest = self.recipe.guest
        lines = [f"- **{k}**: {v}" for k, v in machine_facts().items() if k != "packer"]
        lines += [
            f"- **image**: {guest.name} ({guest.memory_mib} MiB, {guest.disk_mib} MiB disk)",
            f"- **command**: `{command}`",
            f"- **conditions**: {self.quiet_note}",
            "",
            f"| seconds, {len(self.results)} runs | median | min | max |",
            "|---|--:|--:|--:|",
            *[
                f"| {label.strip() if not label.startswith(' ') else '↳ ' + label.strip()} "
                f"| {med:.2f} | {low:.2f} | {high:.2f} |"
                for label, med, low, high in rows
            ],
            "",
            "Runs: "
            + "; ".join(
                f"{r.index}: full {r.figures['full']:.2f}, rebuild {r.figures['rebuild']:.2f} "
                f"(load {r.load1:.2f})"
                for r in self.results
            ),
        ]
        return "\n".join(lines)


def _reused_steps(build) -> list[str]:
    from builds.models import BuildStep, StepStatus

    reused = BuildStep.objects.filter(vm__build=build, status=StepStatus.REUSED)
    return [step.name for step in reused.order_by("vm__index", "index")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", choices=sorted(GUESTS), default="tiny")
    parser.add_argument("--runs", type=int, default=3, help="full build + rebuild pairs")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="MINUTES")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--max-vms", type=int, default=1)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    args.tools, args.mode, args.trace = {"rudder"}, "portal", False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    started = time.monotonic()
    try:
        return run_bench(
            RebuildBench, args, name="rebuild_bench.py", folder="rvrebuild-", prefix="rvr"
        )
    finally:
        print(f"{time.monotonic() - started:.0f}s in all", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
