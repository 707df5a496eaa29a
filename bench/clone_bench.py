#!/usr/bin/env python3
"""Clone benchmark: control-plane time to create and start N clones, linked vs. full copies,
and (--ready) the time from Launch until every VM of them is ready.

    .venv/bin/python bench/clone_bench.py [--image tiny|debian|tiny,debian] [--sizes 1,10,30]
        [--modes linked,full] [--start cold,warm] [--ready [--ready-timeout S]] [--workers 8]
        [--memory MIB|tiny=MIB,debian=MIB]
        [--markdown] [--keep-running S]

With several images (``--image tiny,debian``) every image gets the same rounds, one image
after the other in the same run, and the table has a row per image; with ``--start
cold,warm --ready`` it ends with how much sooner warm clones were ready than cold ones.

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
    image: str = "tiny"  # --image: the test image the module runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,10,30", help="clone counts (default 1,10,30)")
    parser.add_argument("--workers", type=int, default=8, help="threads (default 8)")
    parser.add_argument(
        "--image",
        default="tiny",
        help=f"{' or '.join(sorted(GUESTS))}, or several: tiny,debian",
    )
    parser.add_argument(
        "--memory", default="",
        help="guest MiB for every image, or per image: tiny=256,debian=512 "
        "(default: tiny 256, debian 1024)",
    )  # fmt: skip
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
    args.images = [name.strip() for name in args.image.split(",") if name.strip()]
    unknown = [name for name in args.images if name not in GUESTS]
    if unknown or not args.images:
        parser.error(f"--image: unknown image(s) {', '.join(unknown) or '(none)'}")
    try:
        args.memories = memories(args.memory, args.images)
    except ValueError as exc:
        parser.error(f"--memory: {exc}")
    return args


def memories(text: str, images: list[str]) -> dict[str, int]:
    """Guest MiB per image from --memory: "" (each image's default), "512" or
    "tiny=256,debian=512" (images not named keep their default)."""
    chosen = {name: GUESTS[name].memory_mib for name in images}
    if not text.strip():
        return chosen
    if "=" not in text:
        return dict.fromkeys(images, _mib(text))
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in chosen:
            raise ValueError(f"{name.strip()!r} is not one of the images run ({', '.join(images)})")
        chosen[name.strip()] = _mib(value)
    return chosen


def _mib(value: str) -> int:
    if not value.strip().isdigit() or not 64 <= int(value) <= 16384:
        raise ValueError(f"{value!r} is not a memory size in MiB between 64 and 16384")
    return int(value)


def one_round(
    hv, config, spec, folder: Path, mode: str, n: int, keep: float,
    warm: engine.WarmSource | None = None, image: str = "tiny",
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
        image=image,
    )


def make_warm_image(
    hv, config, spec, folder: Path, image: str = "tiny"
) -> tuple[engine.WarmSource, float]:
    """The template booted once and saved (ruddervirt.engine.warm); the seconds it took."""
    req = engine.CloneRequest(
        key=f"w{image[0]}", spec=spec, workdir=folder / "warm" / image,
        title=f"bench warm image ({image})",
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


def image_rounds(hv, config, folder: Path, image: str, quiet: str) -> list[Round]:
    """Every round (sizes x starts x modes) of the module on `image`."""
    memory = ARGS.memories[image]
    built = time.monotonic()
    spec = build_template(hv, config, folder, image, image_path(image), memory, key=f"tpl-{image}")
    disk = folder / str(spec.vms[0].disks[0].path)
    print(
        f"clone bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} CPUs, {quiet or f'load {os.getloadavg()[0]:.2f}'}, "
        f"{running_vms(hv)} running VMs, domain type {config.domain_type}, image "
        f"{image}, {memory} MiB, template built in {time.monotonic() - built:.0f}s, "
        f"{disk.stat().st_blocks * 512 // MIB} MiB on disk",
        file=sys.stderr,
    )
    starts = ARGS.start.split(",")
    warm = None
    if "warm" in starts:
        warm, took = make_warm_image(hv, config, spec, folder, image)
        print(f"  {image}: warm image made in {took:.1f}s (load {os.getloadavg()[0]:.2f})",
              file=sys.stderr)  # fmt: skip
    rounds = []
    for n in (int(s) for s in ARGS.sizes.split(",")):
        for start in starts:
            for mode in ARGS.modes.split(","):
                if start == "warm" and mode == "full":
                    continue  # a warm clone is an overlay on the image's frozen disks
                result = one_round(hv, config, spec, folder, mode, n, ARGS.keep_running,
                                   warm=warm if start == "warm" else None, image=image)  # fmt: skip
                rounds.append(result)
                print(f"  {asdict(result)} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    return rounds


def running_vms(hv) -> int:
    return sum(d.state.value == "running" for d in hv.list_domains(""))


def markdown(rounds: list[Round]) -> str:
    """The rounds as a table (an image column when there are several images), then, for each
    image and size measured both ways, how much sooner the warm clones were all ready."""
    timed = any(r.ready_via or r.not_ready for r in rounds)
    several = len({r.image for r in rounds}) > 1
    extra = " launch → ready: first / median / all (s) | ready via | not ready |" if timed else ""
    lines = [
        ("| image " if several else "")
        + "| clones | mode | create + start (s) | prepare / start / resume (s) | per clone (ms) "
        "| disk per clone (KiB, mean / max) | delete (s) | failed |" + extra,
        ("|---" if several else "")
        + "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|---|---:|" if timed else ""),
    ]  # fmt: skip
    for r in rounds:
        mode = r.mode if r.start == "cold" else f"{r.mode}, warm"
        row = (
            (f"| {r.image} " if several else "")
            + f"| {r.clones} | {mode} | {r.create_start_s:.2f} | {r.prepare_s:.2f} / "
            f"{r.start_s:.2f} / {r.resume_s:.2f} | {r.per_clone_ms:.0f} | "
            f"{r.disk_per_clone_kib:,.0f} / {r.disk_per_clone_max_kib:,.0f} | "
            f"{r.delete_s:.2f} | {r.failures} |"
        )
        if timed:
            row += f" {_s(r.ready_first_s)} / {_s(r.ready_median_s)} / {_s(r.ready_last_s)} "
            row += f"| {r.ready_via or '-'} | {r.not_ready} |"
        lines.append(row)
    return "\n".join(lines + speedups(rounds))


def speedups(rounds: list[Round]) -> list[str]:
    """ "- debian, 30 clones: all ready 41.0 s warm vs 800.2 s cold (19.5x sooner)" for each
    image and size with a linked cold and a warm round whose every VM got ready."""
    last = {(r.image, r.clones, r.start): r.ready_last_s for r in rounds if r.mode == "linked"}
    found = []
    for (image, n, start), warm in last.items():
        cold = last.get((image, n, "cold"))
        if start == "warm" and warm and cold:
            found.append(
                f"- {image}, {n} clone{'s' if n != 1 else ''}: all ready {warm:.1f} s warm vs "
                f"{cold:.1f} s cold ({cold / warm:.1f}x sooner)"
            )
    return ["", *found] if found else []


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
        for image in ARGS.images:
            rounds += image_rounds(hv, config, folder, image, quiet)
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
