#!/usr/bin/env python3
"""Build benchmark: RudderVirt and Packer's QEMU builder, the same recipe on the same image.

    .venv/bin/python bench/build_bench.py [--image tiny|debian] [--runs N] [--markdown]
        [--mode portal|engine] [--tools rudder,packer,packer-lean] [--wait-quiet MINUTES]
        [--verbose]

The recipe (bench/build_recipe.py): the tiny test image or the Debian 12 test image
(tools/debianimage, Debian's genericcloud image remade from Debian packages), boot, one
shell step, a 1 MiB upload, a sha256sum step, shutdown, capture. Each tool builds it N
times, the order of the tools reversed every other round (ABC CBA: no order bias); the
table gives the median and minimum of every phase (bench/build_phases.py says where each
phase starts and ends). Three tools: RudderVirt; Packer with RudderVirt's device set
(`packer`); Packer as tuned for speed (`packer-lean`: QEMU's default devices, the seed on
virtio, `sync; poweroff -f`), so every result shows RudderVirt against Packer at its
fastest too.

Everything lives in a temporary folder (storage root, SQLite database, Packer's output)
and under a libvirt name prefix of its own ("rvb<pid>-"); both are removed at the end,
also after a failure or Ctrl-C. Needs root (qemu:///system, the tiny image build) and
Debian's `packer` package for the Packer side (`apt install packer`).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.contrib.auth.base_user import AbstractBaseUser

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.build_packer import PackerRun, packer_version, run_packer  # noqa: E402
from bench.build_phases import packer_marks, phases, rudder_marks, rudder_output  # noqa: E402
from bench.build_recipe import GUESTS, Recipe, guest_timing, make_recipe, manifest_text  # noqa: E402
from bench.build_report import RunRecord, markdown_table, run_lines, text_table  # noqa: E402
from bench.images import image_path  # noqa: E402

PACKER_TIMEOUT_S = 900.0
TOOLS = {"rudder": "RudderVirt", "packer": "Packer", "packer-lean": "Packer lean"}
QUIET_POLL_S = 30.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--image", choices=sorted(GUESTS), default="tiny", help="the image (default tiny)"
    )
    parser.add_argument("--runs", type=int, default=3, help="builds per tool (default 3)")
    parser.add_argument("--markdown", action="store_true", help="print the results as markdown")
    parser.add_argument(
        "--mode",
        choices=("portal", "engine"),
        default="portal",
        help="RudderVirt through submit_manifest + execute_build (portal, default) or "
        "ruddervirt.engine.build.run_build alone (engine)",
    )
    parser.add_argument(
        "--tools",
        default="rudder,packer,packer-lean",
        help="any of rudder, packer, packer-lean (default all three)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="first wait up to MINUTES for load < --max-load and at most --max-vms other "
        "running VMs (then run anyway, and say so)",
    )
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--max-vms", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="echo every event and line")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="after each run, print its timeline (seconds since its start) to stderr",
    )
    args = parser.parse_args(argv)
    args.tools = {t.strip() for t in args.tools.split(",") if t.strip()}
    if not args.tools <= set(TOOLS) or not args.tools or args.runs < 1:
        parser.error("--tools takes rudder, packer and/or packer-lean; --runs must be >= 1")
    return args


def configure_environment(tmp: Path, prefix: str) -> None:
    """Settings for a throwaway portal: read by ruddervirt.settings at django.setup()."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "ruddervirt.settings",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(32),
            "DATABASE_URL": f"sqlite:///{tmp / 'bench.sqlite3'}",
            "RUDDERVIRT_VAR_DIR": str(tmp / "var"),
            "RUDDERVIRT_STORAGE_ROOT": str(tmp / "storage"),
            "RUDDERVIRT_DOMAIN_TYPE": "qemu",
            "RUDDERVIRT_ALLOW_INTERNET": "false",
            "RUDDERVIRT_NAME_PREFIX": prefix,
            "RUDDERVIRT_LOG_LEVEL": "WARNING",
            # The recipe's image and blob are file:// URLs in the temporary folder.
            "RUDDERVIRT_FILE_SOURCE_DIRS": str(tmp),
            "RUDDERVIRT_FETCH_ALLOW_NETS": "127.0.0.0/8",
        }
    )


def setup_django() -> AbstractBaseUser:
    """Set Django up, migrate the throwaway database, return a superuser to build as."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    return get_user_model().objects.create_superuser(username="bench", password=None)


def _first_line(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def machine_facts() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{os.cpu_count()} cores ({cpu}), {mem_kib // 1024 // 1024} GiB, "
        f"{platform.system()} {platform.release()}",
        "hypervisor": "TCG (domain type qemu; nested KVM is broken here), "
        + _first_line(["qemu-system-x86_64", "--version"])
        + ", libvirt "
        + _first_line(["virsh", "--version"]),
        "packer": packer_version(),
        "python": platform.python_version(),
    }


@dataclass
class Quiet:
    load1: float
    other_vms: int


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, prefix: str) -> None:
        self.args, self.tmp, self.prefix = args, tmp, prefix
        self.hv = None
        self.config = None
        self.user = None
        self.recipe: Recipe | None = None
        self.records: list[RunRecord] = []
        self.quiet_note = ""
        self.echo = print if args.verbose else None

    # --- setup and teardown --------------------------------------------------------
    def setup(self) -> None:
        configure_environment(self.tmp, self.prefix)
        self.user = setup_django()
        from ruddervirt.engine.sources import fetch
        from ruddervirt.runtime import engine_config, get_hypervisor

        self.hv, self.config = get_hypervisor(), engine_config()
        guest = GUESTS[self.args.image]
        self.recipe = make_recipe(guest, image_path(guest.name), self.tmp)
        # Warm RudderVirt's caches (Packer reads the file:// image in place): a first build
        # must not be charged for copying the image once into the cache.
        policy = self.config.fetch_policy
        image, blob = self.recipe.image_url, self.recipe.blob_url
        fetch(image, f"sha256:{self.recipe.image_sha256}", self.config.cache_dir, policy=policy)
        fetch(blob, f"sha256:{self.recipe.blob_sha256}", self.config.files_cache_dir, policy=policy)

    def cleanup(self) -> list[str]:
        """Remove every domain and network under our prefix, then the temporary folder.
        Returns what was removed; problems are printed, never raised (the folder goes anyway)."""
        removed: list[str] = []
        try:
            if self.hv is not None:
                removed = self._remove_vms_and_networks()
                from django.db import connections

                connections.close_all()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return removed

    def _remove_vms_and_networks(self) -> list[str]:
        from ruddervirt.engine.cleanup import remove_domain
        from ruddervirt.hypervisor.driver import HypervisorError

        removed = []
        for domain in self.hv.list_domains(self.prefix):
            try:
                remove_domain(self.hv, domain.name)
                removed.append(domain.name)
            except HypervisorError as exc:
                print(f"could not remove {domain.name}: {exc}", file=sys.stderr)
        for network in self.hv.list_networks(self.prefix):
            try:
                if network.active:
                    self.hv.destroy_network(network.name)
                self.hv.undefine_network(network.name)
                removed.append(network.name)
            except HypervisorError as exc:
                print(f"could not remove {network.name}: {exc}", file=sys.stderr)
        return removed

    # --- the machine -------------------------------------------------------------------
    def quiet(self) -> Quiet:
        from ruddervirt.hypervisor.driver import DomainState

        others = [
            d
            for d in self.hv.list_domains("")
            if not d.name.startswith(self.prefix) and d.state is DomainState.RUNNING
        ]
        return Quiet(os.getloadavg()[0], len(others))

    def wait_quiet(self) -> None:
        deadline = time.monotonic() + self.args.wait_quiet * 60
        while True:
            state = self.quiet()
            ok = state.load1 < self.args.max_load and state.other_vms <= self.args.max_vms
            if ok or time.monotonic() >= deadline:
                break
            print(
                f"waiting for a quiet machine: load {state.load1:.2f}, "
                f"{state.other_vms} other running VM(s)",
                file=sys.stderr,
            )
            time.sleep(QUIET_POLL_S)
        quiet = "quiet" if ok else "NOT quiet (ran anyway)"
        self.quiet_note = (
            f"machine {quiet} at start: load {state.load1:.2f}, {state.other_vms} other "
            f"running VM(s) (wanted load < {self.args.max_load}, at most "
            f"{self.args.max_vms} other VM(s))"
        )
        print(self.quiet_note, file=sys.stderr)

    # --- runs ----------------------------------------------------------------------------
    def run_all(self) -> None:
        tools = [t for t in TOOLS if t in self.args.tools]
        for index in range(1, self.args.runs + 1):
            order = tools if index % 2 else list(reversed(tools))  # ABC CBA: no order bias
            for tool in order:
                state = self.quiet()
                started = time.monotonic()
                record = RunRecord(TOOLS[tool], index, state.load1, state.other_vms)
                record.phases = (
                    self.run_rudder(index)
                    if tool == "rudder"
                    else self.run_packer(index, lean=tool == "packer-lean")
                )
                self.records.append(record)
                print(
                    f"run {index} {record.tool}: {time.monotonic() - started:.1f}s wall, "
                    f"overhead {record.phases['overhead']:.2f}s",
                    file=sys.stderr,
                )

    def run_rudder(self, index: int) -> dict[str, float | None]:
        from bench import build_rudder

        text = manifest_text(self.recipe)
        if self.args.mode == "portal":
            run = build_rudder.run_portal(text, self.user, echo=self.echo)
        else:
            run = build_rudder.run_engine(
                text, index, hv=self.hv, config=self.config, echo=self.echo
            )
        if self.args.trace:
            _trace(run.start, [(e.t, f"{e.kind:<13} {e.vm:<6} {e.text}") for e in run.events])
            _trace_console(run.start, run.seen, run.console)
        guest = guest_timing(rudder_output(run.events), self.recipe)
        _check(guest.checksum_ok and run.output.is_file(), "RudderVirt", run.output)
        if self.args.mode == "engine":
            build_rudder.remove_engine_workdir(self.config, index)
        return phases(rudder_marks(run.events, run.start, run.end, run.seen), guest)

    def run_packer(self, index: int, *, lean: bool = False) -> dict[str, float | None]:
        folder = self.tmp / f"packer{'-lean' if lean else ''}-{index}"
        run: PackerRun = run_packer(
            self.recipe, folder, timeout=PACKER_TIMEOUT_S, echo=self.echo, lean=lean
        )
        if self.args.trace:
            _trace(run.start, run.lines)
            _trace_console(run.start, run.seen, run.console)
        guest = guest_timing(run.lines, self.recipe)
        _check(guest.checksum_ok and run.output.is_file(), TOOLS["packer"], run.output)
        result = phases(packer_marks(run.lines, run.start, run.end, run.seen), guest)
        shutil.rmtree(folder, ignore_errors=True)
        return result

    # --- output --------------------------------------------------------------------------
    def by_tool(self, tool: str) -> list[RunRecord]:
        return [r for r in self.records if r.tool == tool]

    def report(self, command: str) -> str:
        groups = {
            TOOLS[tool]: self.by_tool(TOOLS[tool]) for tool in TOOLS if tool in self.args.tools
        }
        if not self.args.markdown:
            return "\n".join([text_table(groups), "", *run_lines(self.records)])
        facts = machine_facts()
        lines = [f"- **{k}**: {v}" for k, v in facts.items()]
        guest = self.recipe.guest
        lines += [
            f"- **image**: {guest.name} ({guest.memory_mib} MiB, {guest.disk_mib} MiB disk, "
            f"logged into as {guest.user}, SSH server {guest.sshd})",
            f"- **command**: `{command}`",
            f"- **RudderVirt path**: {self.args.mode}",
            f"- **conditions**: {self.quiet_note}",
            "",
            markdown_table(groups),
            "",
            "Runs, in the order they ran:",
            "",
            *[f"- {line}" for line in run_lines(self.records)],
        ]
        return "\n".join(lines)


def _trace(start: float, lines: list[tuple[float, str]]) -> None:
    for t, text in lines:
        print(f"{t - start:8.3f}  {text}", file=sys.stderr)


def _trace_console(start: float, seen: dict[str, float], console: str) -> None:
    for key, t in seen.items():
        print(f"{t - start:8.3f}  console: {key}", file=sys.stderr)
    print("console output:\n" + console, file=sys.stderr)


def _check(ok: bool, tool: str, output: Path) -> None:
    if not ok:
        raise RuntimeError(
            f"{tool}: the checksum step did not print the blob's sha256, or no disk at {output}"
        )


def run_bench(
    bench_class: type[Bench], args: argparse.Namespace, *, name: str, folder: str, prefix: str
) -> int:
    """Set up a throwaway portal in a temporary folder (named `folder`...), run
    `bench_class`'s runs under the libvirt name prefix `prefix<pid>-` and print its report;
    always clean up (also after Ctrl-C: a second one must not stop cleanup). The exit
    status. `name`: the script, for the report's command line."""
    tmp = Path(tempfile.mkdtemp(prefix=folder))
    tmp.chmod(0o755)  # libvirt-qemu must reach the disks and seeds below it
    bench = bench_class(args, tmp, f"{prefix}{os.getpid()}-")
    command = f"bench/{name} " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    status = 0
    try:
        bench.setup()
        bench.wait_quiet()
        bench.run_all()
        print(bench.report(command.strip()))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        removed = bench.cleanup()
        if removed:
            print("removed: " + ", ".join(removed), file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = argv
    return run_bench(Bench, args, name="build_bench.py", folder="rvbench-", prefix="rvb")


if __name__ == "__main__":
    sys.exit(main())
