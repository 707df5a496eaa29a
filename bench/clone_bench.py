#!/usr/bin/env python3
"""Clone benchmark: control-plane time to create and start N clones, linked vs. full copies,
and (--ready) the time from Launch until every VM of them is ready.

    .venv/bin/python bench/clone_bench.py [--image tiny|debian] [--sizes 1,10,30]
        [--modes linked,full] [--start cold,warm] [--ready [--ready-timeout S]] [--workers 8]
        [--memory MIB]
        [--markdown] [--keep-running S]

The module: one VM of the tiny or the Debian 12 test image with one managed subnet, so every
clone also gets its own libvirt network and gateway (namespace + dnsmasq). It is built once
for real first (bench/clone_ready.py: the engine boots, generalizes and captures it), so the
clones start from a template as a class's do. For each N and each mode (linked
overlays, full copies), the clones are made with ruddervirt.engine.clone.create_many, the
same call and thread count (8) the portal uses to launch a class in-process: every clone's
disks, network and domain, then every domain started paused, then all resumed. "Create +
start" is the wall-clock time until every domain is running (the guests then boot on their
own: that is not control-plane time). "Disk per clone" is what the clone's folder occupies
on disk (st_blocks) right after creation. With --start warm, the template is first booted
once and saved as a warm image (ruddervirt.engine.warm, timed apart), and warm rounds restore
every clone from it instead of booting (linked clones only). Then every clone is removed
(timed too) before the next round, so at most N guests run at once.

Everything lives in a temporary folder and under a libvirt name prefix of its own
("rvc<pid>-"); both are removed at the end, also after a failure or Ctrl-C. Needs root
(qemu:///system, network namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.build_recipe import GUESTS  # noqa: E402
from bench.clone_ready import Readiness, build_template, wait_ready  # noqa: E402
from bench.images import image_path  # noqa: E402
from ruddervirt.engine import clone as engine  # noqa: E402
from ruddervirt.engine import warm as warm_engine  # noqa: E402
from ruddervirt.engine.cleanup import remove_owned  # noqa: E402
from ruddervirt.engine.config import EngineConfig  # noqa: E402
from ruddervirt.fetchpolicy import FetchPolicy  # noqa: E402
from ruddervirt.hypervisor.libvirt_driver import LibvirtHypervisor  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Round:
    mode: str
    clones: int
    create_start_s: float
    prepare_s: float
    start_s: float
    resume_s: float
    per_clone_ms: float
    disk_per_clone_kib: float
    disk_per_clone_max_kib: float
    delete_s: float
    failures: int
    ready_first_s: float | None = None  # --ready: since the launch began, the first VM ready
    ready_median_s: float | None = None
    ready_last_s: float | None = None  # ... and the last: every VM of the N clones is ready
    ready_via: str = ""  # "agent", "ssh" or both
    not_ready: int = 0  # VMs not ready within --ready-timeout
    start: str = "cold"  # --start: booted, or "warm": restored from the warm image


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,30", help="clone counts (default 1,10,30)")
    parser.add_argument("--workers", type=int, default=8, help="threads (default 8)")
    parser.add_argument("--image", choices=sorted(GUESTS), default="tiny")
    parser.add_argument(
        "--memory", type=int, default=None, help="guest MiB (default: tiny 256, debian 1024)"
    )
    parser.add_argument(
        "--ready", action="store_true",
        help="after each launch, wait until every VM is ready (guest agent or SSH banner)",
    )  # fmt: skip
    parser.add_argument("--ready-timeout", type=float, default=1800.0, metavar="S")
    parser.add_argument("--modes", default="linked,full", help="linked, full or both")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--json", action="store_true", help="print the rounds as JSON")
    parser.add_argument(
        "--wait-quiet", type=float, default=0.0, metavar="MINUTES",
        help="first wait up to MINUTES for a 1-minute load average below --max-load",
    )  # fmt: skip
    parser.add_argument(
        "--start", default="cold",
        help="cold (boot), warm (resume a warm image made once first, timed apart) or both: "
        "cold,warm; warm rounds are linked clones only",
    )  # fmt: skip
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument(
        "--keep-running", type=float, default=0.0, metavar="S",
        help="leave each round's guests running S seconds before removing them",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.memory is None:
        args.memory = GUESTS[args.image].memory_mib
    return args


def one_round(
    hv, config, spec, folder: Path, mode: str, n: int, keep: float,
    warm: engine.WarmSource | None = None,
) -> Round:  # fmt: skip
    start = "warm" if warm is not None else "cold"
    requests = [
        engine.CloneRequest(
            key=f"{mode[0]}{start[0]}{n}x{i}",
            spec=spec,
            workdir=folder / "clones" / f"{mode}-{start}-{n}-{i}",
            full_copy=mode == "full",
            title=f"bench {mode} {start} {i}",
            warm=warm,
        )
        for i in range(n)
    ]
    waves: dict[str, float] = {}
    started = time.monotonic()
    results = engine.create_many(
        requests, hv=hv, config=config, workers=ARGS.workers, timings=waves
    )
    took = time.monotonic() - started
    failures = [r for r in results if isinstance(r, engine.CloneError)]
    for failure in failures[:3]:
        print(f"  a clone failed: {failure}", file=sys.stderr)
    sizes = [engine.disk_usage(r.workdir) for r in requests if r.workdir.exists()]
    made = [r for r in results if isinstance(r, engine.CloneResult)]
    ready = wait_ready(hv, made, started, ARGS.ready_timeout) if ARGS.ready else None
    if keep:
        time.sleep(keep)
    removing = time.monotonic()
    with ThreadPoolExecutor(max_workers=ARGS.workers) as pool:
        list(pool.map(lambda req: engine.delete_clone(req, hv=hv, config=config), requests))
    return Round(
        mode=mode,
        clones=n,
        create_start_s=round(took, 2),
        prepare_s=round(waves.get("prepare", 0.0), 2),
        start_s=round(waves.get("start", 0.0), 2),
        resume_s=round(waves.get("resume", 0.0), 2),
        per_clone_ms=round(took / n * 1000, 1),
        disk_per_clone_kib=round(statistics.mean(sizes) / 1024, 1) if sizes else 0.0,
        disk_per_clone_max_kib=round(max(sizes) / 1024, 1) if sizes else 0.0,
        delete_s=round(time.monotonic() - removing, 2),
        failures=len(failures),
        **(_ready_fields(ready) if ready is not None else {}),
        start=start,
    )


def make_warm_image(hv, config, spec, folder: Path) -> tuple[engine.WarmSource, float]:
    """The template booted once and saved (ruddervirt.engine.warm); the seconds it took."""
    req = engine.CloneRequest(
        key="w0", spec=spec, workdir=folder / "warm" / "0", title="bench warm image",
        kind=warm_engine.KIND,
    )  # fmt: skip
    warm_engine.make_folder(req.workdir)
    made = warm_engine.make_image(req, hv=hv, config=config, ready_timeout=ARGS.ready_timeout)
    return engine.WarmSource(req.workdir), made.seconds


def _ready_fields(ready: Readiness) -> dict[str, Any]:
    times = sorted(ready.ready_s.values())
    return {
        "ready_first_s": round(times[0], 1) if times else None,
        "ready_median_s": round(statistics.median(times), 1) if times else None,
        "ready_last_s": round(times[-1], 1) if times and not ready.not_ready else None,
        "ready_via": "+".join(sorted(set(ready.via.values()))),
        "not_ready": len(ready.not_ready),
    }


def wait_quiet(minutes: float, max_load: float) -> str:
    """Wait for the host to calm down (other people's VMs); says how it went."""
    deadline = time.monotonic() + minutes * 60
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(15)
    load = os.getloadavg()[0]
    return f"load {load:.2f}" + ("" if load < max_load else f" (still >= {max_load}: ran anyway)")


def running_vms(hv) -> int:
    return sum(d.state.value == "running" for d in hv.list_domains(""))


def markdown(rounds: list[Round]) -> str:
    timed = any(r.ready_via or r.not_ready for r in rounds)
    extra = " launch → ready: first / median / all (s) | ready via | not ready |" if timed else ""
    lines = [
        "| clones | mode | create + start (s) | prepare / start / resume (s) | per clone (ms) "
        "| disk per clone (KiB, mean / max) | delete (s) | failed |" + extra,
        "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|---|---:|" if timed else ""),
    ]
    for r in rounds:
        mode = r.mode if r.start == "cold" else f"{r.mode}, warm"
        row = (
            f"| {r.clones} | {mode} | {r.create_start_s:.2f} | {r.prepare_s:.2f} / "
            f"{r.start_s:.2f} / {r.resume_s:.2f} | {r.per_clone_ms:.0f} | "
            f"{r.disk_per_clone_kib:,.0f} / {r.disk_per_clone_max_kib:,.0f} | "
            f"{r.delete_s:.2f} | {r.failures} |"
        )
        if timed:
            row += f" {_s(r.ready_first_s)} / {_s(r.ready_median_s)} / {_s(r.ready_last_s)} "
            row += f"| {r.ready_via or '-'} | {r.not_ready} |"
        lines.append(row)
    return "\n".join(lines)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def cleanup(hv, prefix: str, folder: Path) -> None:
    remove_owned(hv, prefix, {})  # every domain and network of this benchmark run
    shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    global ARGS
    ARGS = parse_args(argv)
    prefix = f"rvc{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix="rv-clone-bench-", dir="/var/tmp"))
    folder.chmod(0o755)  # QEMU runs as libvirt-qemu
    hv = LibvirtHypervisor(name_prefix=prefix)
    config = EngineConfig(
        storage_root=folder, domain_type=os.environ.get("RUDDERVIRT_DOMAIN_TYPE", "qemu"),
        name_prefix=prefix, allow_internet=False,
        fetch_policy=FetchPolicy(file_source_dirs=(folder,)),  # the image, copied in
    )  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rounds: list[Round] = []
    quiet = wait_quiet(ARGS.wait_quiet, ARGS.max_load) if ARGS.wait_quiet else ""
    try:
        built = time.monotonic()
        spec = build_template(hv, config, folder, ARGS.image, image_path(ARGS.image), ARGS.memory)
        disk = folder / str(spec.vms[0].disks[0].path)
        print(
            f"clone bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
            f"{os.cpu_count()} CPUs, {quiet or f'load {os.getloadavg()[0]:.2f}'}, "
            f"{running_vms(hv)} running VMs, domain type {config.domain_type}, image "
            f"{ARGS.image}, {ARGS.memory} MiB, template built in {time.monotonic() - built:.0f}s, "
            f"{disk.stat().st_blocks * 512 // MIB} MiB on disk",
            file=sys.stderr,
        )
        starts = ARGS.start.split(",")
        warm = None
        if "warm" in starts:
            warm, took = make_warm_image(hv, config, spec, folder)
            print(f"  warm image made in {took:.1f}s", file=sys.stderr)
        for n in (int(s) for s in ARGS.sizes.split(",")):
            for start in starts:
                for mode in ARGS.modes.split(","):
                    if start == "warm" and mode == "full":
                        continue  # a warm clone is an overlay on the image's frozen disks
                    result = one_round(hv, config, spec, folder, mode, n, ARGS.keep_running,
                                       warm=warm if start == "warm" else None)  # fmt: skip
                    rounds.append(result)
                    print(f"  {asdict(result)}", file=sys.stderr)
    finally:
        cleanup(hv, prefix, folder)
        hv.close()
    if ARGS.json:
        print(json.dumps([asdict(r) for r in rounds]))
    print(markdown(rounds) if ARGS.markdown else "\n".join(str(asdict(r)) for r in rounds))
    return 1 if any(r.failures for r in rounds) else 0


ARGS = argparse.Namespace()

if __name__ == "__main__":
    raise SystemExit(main())
