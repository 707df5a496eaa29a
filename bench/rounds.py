"""One benchmark round: N consoles on one path (direct, portal, websockify), latency then
throughput, with the proxy's memory sampled."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

from bench import procs
from bench.rfbclient import RFBSession, TCPChannel, WebSocketChannel

PROBE = (16, 16)
MIB = 1024 * 1024


@dataclass
class Round:
    mode: str
    target: str
    count: int
    rtts_ms: list[float] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    idle_kib_per_console: float | None = None
    peak_kib_per_console: float | None = None
    errors: list[str] = field(default_factory=list)

    def merge(self, other: Round) -> Round:
        """This round and a repeat of it as one: all samples, all bytes, the larger memory."""
        return Round(
            mode=self.mode,
            target=self.target,
            count=self.count,
            rtts_ms=self.rtts_ms + other.rtts_ms,
            bytes_read=self.bytes_read + other.bytes_read,
            seconds=self.seconds + other.seconds,
            idle_kib_per_console=_max(self.idle_kib_per_console, other.idle_kib_per_console),
            peak_kib_per_console=_max(self.peak_kib_per_console, other.peak_kib_per_console),
            errors=self.errors + other.errors,
        )

    def percentile(self, q: float) -> float | None:
        if len(self.rtts_ms) < 2:
            return self.rtts_ms[0] if self.rtts_ms else None
        return statistics.quantiles(self.rtts_ms, n=1000, method="inclusive")[int(q * 1000) - 1]

    @property
    def mib_per_s(self) -> float:
        return self.bytes_read / MIB / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        return (
            f"{self.target:5} {self.count:3} {self.mode:10} p50={_f(p50)} p99={_f(p99)} ms "
            f"{self.mib_per_s:.1f} MiB/s idle={_f(self.idle_kib_per_console)} "
            f"peak={_f(self.peak_kib_per_console)} KiB/console errors={len(self.errors)}"
        )

    def table_row(self, direct: Round | None) -> str:
        p50, p99 = self.percentile(0.5), self.percentile(0.99)
        added50 = added99 = None
        if direct is not None and self.mode != "direct" and p50 is not None:
            added50 = p50 - (direct.percentile(0.5) or 0)
            added99 = p99 - (direct.percentile(0.99) or 0)
        return (
            f"| {self.target} | {self.count} | {self.mode} | {_f(p50)} | {_f(p99)} "
            f"| {_f(added50)} | {_f(added99)} | {self.mib_per_s:.0f} "
            f"| {_f(self.peak_kib_per_console, 0)} | {len(self.errors)} |"
        )

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "target": self.target,
            "consoles": self.count,
            "samples": len(self.rtts_ms),
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "mib_per_s": self.mib_per_s,
            "idle_kib_per_console": self.idle_kib_per_console,
            "peak_kib_per_console": self.peak_kib_per_console,
            "errors": self.errors[:5],
        }


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def run_round(
    *, mode, target, ports, seconds, interval_s, payload, user, session, portal, websockify
) -> Round:
    """Open len(ports) consoles on `mode`, measure, close them."""
    tokens: list[str | None] = [None] * len(ports)
    if mode == "portal":
        from consoles.services import issue_token

        tokens = [issue_token(user, "bench", port, "vm").token for port in ports]
    memory_pid = {"portal": portal.pid, "websockify": websockify.pid}.get(mode)
    result = Round(mode=mode, target=target, count=len(ports))
    context = {"portal": portal, "websockify": websockify, "session": session}
    asyncio.run(_measure(result, ports, tokens, context, memory_pid, seconds, interval_s, payload))
    return result


async def _open(mode: str, port: int, token: str | None, context: dict) -> RFBSession:
    if mode == "direct":
        channel = await TCPChannel.open(port)
    elif mode == "portal":
        proxy = context["portal"].port
        headers = [
            (b"origin", f"http://127.0.0.1:{proxy}".encode()),
            (b"cookie", f"sessionid={context['session']}".encode()),
        ]
        channel = await WebSocketChannel.open(
            proxy, f"/ws/console/{token}", headers=headers, subprotocols=[]
        )
    else:
        channel = await WebSocketChannel.open(
            context["websockify"].port, f"/?token=p{port}", headers=[], subprotocols=["binary"]
        )
    session = RFBSession(channel)
    await asyncio.wait_for(session.handshake(), 30)
    return session


def _memory(pid: int | None) -> int:
    return procs.tree_pss_kib(pid) if pid else 0


async def _measure(result, ports, tokens, context, pid, seconds, interval_s, payload) -> None:
    before = _memory(pid)
    opened = await asyncio.gather(
        *(_open(result.mode, p, t, context) for p, t in zip(ports, tokens, strict=True)),
        return_exceptions=True,
    )
    sessions = [s for s in opened if isinstance(s, RFBSession)]
    result.errors += [f"open: {e!r}" for e in opened if not isinstance(e, RFBSession)]
    await asyncio.sleep(0.5)  # let the proxy settle (websockify forks, daphne allocates)
    if pid and sessions:
        result.idle_kib_per_console = (_memory(pid) - before) / len(sessions)
    try:
        await _latency(result, sessions, seconds, interval_s)
        peak = await _throughput(result, sessions, seconds, payload, pid)
        if pid and sessions:
            result.peak_kib_per_console = (peak - before) / len(sessions)
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        await asyncio.sleep(0.5)


async def _latency(result: Round, sessions, seconds: float, interval_s: float) -> None:
    end = time.perf_counter() + seconds

    async def probe(session: RFBSession) -> None:
        await asyncio.sleep(random.uniform(0, interval_s))
        while time.perf_counter() < end:
            started = time.perf_counter()
            await asyncio.wait_for(session.update(*PROBE), 30)
            took = time.perf_counter() - started
            result.rtts_ms.append(took * 1000)
            await asyncio.sleep(max(0.0, interval_s - took))

    outcomes = await asyncio.gather(*(probe(s) for s in sessions), return_exceptions=True)
    result.errors += [f"latency: {e!r}" for e in outcomes if isinstance(e, BaseException)]


async def _throughput(result: Round, sessions, seconds: float, payload, pid) -> int:
    started = time.perf_counter()
    end = started + seconds
    peak = [_memory(pid)]

    async def pump(session: RFBSession) -> None:
        while time.perf_counter() < end:
            result.bytes_read += await asyncio.wait_for(session.update(*payload), 30)

    async def sample() -> None:
        while time.perf_counter() < end:
            await asyncio.sleep(0.25)
            peak[0] = max(peak[0], _memory(pid))

    outcomes = await asyncio.gather(*(pump(s) for s in sessions), sample(), return_exceptions=True)
    result.errors += [f"throughput: {e!r}" for e in outcomes if isinstance(e, BaseException)]
    result.seconds = time.perf_counter() - started
    return peak[0]


def idle_memory(*, mode: str, ports, user, session, portal, websockify) -> tuple[float, int]:
    """KiB the proxy's process tree grows by per open, idle console (after each console has
    done its handshake and one update), and how many consoles failed to open. Call with a
    freshly started proxy: memory a previous round freed would be reused and hide the
    cost."""
    tokens: list[str | None] = [None] * (len(ports) + 1)
    if mode == "portal":
        from consoles.services import issue_token

        tokens = [issue_token(user, "bench", port, "vm").token for port in [ports[0], *ports]]
    pid = portal.pid if mode == "portal" else websockify.pid
    context = {"portal": portal, "websockify": websockify, "session": session}
    return asyncio.run(_idle_memory(mode, ports, tokens, context, pid))


async def _idle_memory(mode, ports, tokens, context, pid) -> tuple[float, int]:
    warm = await _open(mode, ports[0], tokens[0], context)  # load the code paths once
    await warm.update(*PROBE)
    await warm.close()
    await asyncio.sleep(1.0)
    before = _memory(pid)
    opened = await asyncio.gather(
        *(_open(mode, p, t, context) for p, t in zip(ports, tokens[1:], strict=True)),
        return_exceptions=True,
    )
    sessions = [s for s in opened if isinstance(s, RFBSession)]
    await asyncio.gather(*(s.update(*PROBE) for s in sessions), return_exceptions=True)
    await asyncio.sleep(1.0)
    grown = _memory(pid) - before
    await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return grown / len(sessions) if sessions else float("nan"), len(ports) - len(sessions)
