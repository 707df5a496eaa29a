"""Console proxy benchmark: the portal's WebSocket consumer vs. a standalone websockify.

    .venv/bin/python bench/console_bench.py [--counts 1,10,50] [--seconds 5] [--qemu 2]

For 1, 10 and 50 concurrent consoles it measures, side by side in one run, against the same
VNC servers:
  direct      RFB straight over TCP to the VNC server (the baseline)
  portal      through daphne + the consoles app (token, session, Channels consumer)
  websockify  through websockify 0.13 (one process per connection), token file plugin

- latency: each console asks for a 16x16 area (non-incremental FramebufferUpdateRequest)
  every --interval-ms and waits for it; p50/p99 of the round trip, and what the proxy adds
  to the direct p50/p99 at the same concurrency.
- throughput: each console asks for --payload areas back to back; MiB/s over all consoles.
- memory: what the proxy's memory (PSS of its process tree) grows by per open console
  (portal: the daphne process; websockify: its parent and per-connection processes), with
  the consoles idle and at peak throughput.

VNC servers: bench/fake_rfb.py (answers at once; the proxy's cost is all that is measured)
and, with --qemu N, N diskless QEMU domains (SeaBIOS screen; QEMU answers on its refresh
timer, so its numbers include QEMU's own pacing). Loopback only; every process and domain
the benchmark starts is stopped at the end, and the run is bounded by --max-seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import procs  # noqa: E402
from bench.rounds import Round, idle_memory, run_round  # noqa: E402

MODES = ("direct", "portal", "websockify")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,10,50", help="concurrent consoles per round")
    parser.add_argument("--seconds", type=float, default=3.0, help="per phase and round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per path, interleaved")
    parser.add_argument("--interval-ms", type=float, default=50.0, help="latency probe pace")
    parser.add_argument("--payload", default="640x400", help="throughput area, WxH")
    parser.add_argument("--qemu", type=int, default=0, help="also run against N QEMU domains")
    parser.add_argument("--max-seconds", type=float, default=900, help="hard limit")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def setup_django(folder: Path) -> None:
    """The benchmark's own database: a scratch SQLite file with the portal's tables."""
    os.environ["DATABASE_URL"] = f"sqlite:///{folder / 'bench.sqlite3'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.console_settings"
    os.environ.setdefault("RUDDERVIRT_NAME_PREFIX", f"rvbench{os.getpid()}-")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def bench_user():
    from django.contrib.auth import get_user_model
    from django.test import Client

    user = get_user_model().objects.create_user("bench", password="unused-bench-password")  # noqa: S106
    client = Client()
    client.force_login(user)
    return user, client.cookies["sessionid"].value


def main() -> int:
    args = parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    width, height = (int(v) for v in args.payload.split("x"))
    deadline = time.monotonic() + args.max_seconds
    results: list[Round] = []
    with (
        tempfile.TemporaryDirectory(prefix="rv-console-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        folder = Path(tmp)
        setup_django(folder)
        user, session = bench_user()
        targets = {"fake": stack.enter_context(procs.fake_servers(max(counts), folder))}
        if args.qemu:
            targets["qemu"] = stack.enter_context(procs.qemu_domains(args.qemu))
        every_port = sorted({p for ports in targets.values() for p in ports})
        print(f"# load average before: {os.getloadavg()}", file=sys.stderr)
        memory = measure_memory(counts, targets["fake"], folder, every_port, user, session)
        portal = stack.enter_context(procs.portal(folder))
        websockify = stack.enter_context(procs.websockify(folder, every_port))
        for target, ports in targets.items():
            for count in counts:
                merged: dict[str, Round] = {}
                # The paths take turns, so a burst of load on this shared machine hits all
                # of them alike rather than one.
                for _ in range(args.repeat):
                    for mode in MODES:
                        if time.monotonic() > deadline:
                            raise SystemExit("stopping: --max-seconds reached")
                        round_ = run_round(
                            mode=mode,
                            target=target,
                            ports=[ports[i % len(ports)] for i in range(count)],
                            seconds=args.seconds,
                            interval_s=args.interval_ms / 1000,
                            payload=(width, height),
                            user=user,
                            session=session,
                            portal=portal,
                            websockify=websockify,
                        )
                        print(round_.summary(), file=sys.stderr)
                        merged[mode] = merged[mode].merge(round_) if mode in merged else round_
                results += merged.values()
        print(f"# load average after: {os.getloadavg()}", file=sys.stderr)
    print(report(results, memory, args))
    if args.json:
        idle = {f"{mode} {count}": value for (mode, count), value in memory.items()}
        data = {"rounds": [r.as_dict() for r in results], "idle_kib_per_console": idle}
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


def measure_memory(counts, ports, folder, every_port, user, session) -> dict[tuple, tuple]:
    """Idle memory per console (and consoles that failed to open), each count against
    freshly started proxies."""
    memory: dict[tuple, tuple] = {}
    for count in counts:
        with procs.portal(folder) as portal, procs.websockify(folder, every_port) as ws:
            for mode in ("portal", "websockify"):
                memory[(mode, count)] = idle_memory(
                    mode=mode,
                    ports=[ports[i % len(ports)] for i in range(count)],
                    user=user,
                    session=session,
                    portal=portal,
                    websockify=ws,
                )
                kib, failed = memory[(mode, count)]
                print(f"memory {mode} {count}: {kib:.0f} KiB, {failed} failed", file=sys.stderr)
    return memory


def report(results: list[Round], memory: dict[tuple, tuple], args: argparse.Namespace) -> str:
    direct = {(r.target, r.count): r for r in results if r.mode == "direct"}
    lines = [
        f"Consoles: {args.counts}; {args.repeat} interleaved rounds of {args.seconds:g} s per "
        f"phase and path; latency probe every "
        f"{args.interval_ms:g} ms; throughput area {args.payload}.",
        "",
        "| VNC servers | consoles | path | p50 ms | p99 ms | added p50 ms | added p99 ms "
        "| MiB/s total | KiB growth per console at peak | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = direct.get((r.target, r.count))
        lines.append(r.table_row(base))
    lines += [
        "",
        "Idle memory per open console (PSS growth of the proxy's process tree, fresh proxy):",
        "",
        "| consoles | portal KiB | websockify KiB | failed to open (portal / websockify) |",
        "|---:|---:|---:|---:|",
    ]
    for count in sorted({c for _, c in memory}):
        (portal, p_failed), (ws, w_failed) = (
            memory[("portal", count)],
            memory[("websockify", count)],
        )
        lines.append(f"| {count} | {portal:.0f} | {ws:.0f} | {p_failed} / {w_failed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
