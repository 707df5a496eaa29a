"""Tables of the build benchmark: median and minimum per phase, per tool (text or markdown)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.build_phases import PHASES

Phases = Mapping[str, float | None]


@dataclass
class RunRecord:
    tool: str  # "RudderVirt" or "Packer"
    index: int
    load1: float  # 1-minute load average when the run started
    busy_domains: int  # other running libvirt domains when the run started
    phases: Phases = field(default_factory=dict)


def _values(runs: Sequence[RunRecord], key: str) -> list[float]:
    return [v for r in runs if (v := r.phases.get(key)) is not None]


def _cell(values: list[float], how: Callable[[list[float]], float]) -> str:
    return f"{how(values):.2f}" if values else "-"


def rows(rudder: Sequence[RunRecord], packer: Sequence[RunRecord]) -> list[list[str]]:
    """One row per phase: label, then median and min for RudderVirt, then for Packer."""
    table = []
    for key, label in PHASES:
        cells = [label]
        for runs in (rudder, packer):
            values = _values(runs, key)
            cells += [_cell(values, statistics.median), _cell(values, min)]
        table.append(cells)
    return table


HEADER = ["phase (seconds)", "RudderVirt median", "RudderVirt min", "Packer median", "Packer min"]


def text_table(rudder: Sequence[RunRecord], packer: Sequence[RunRecord]) -> str:
    body = rows(rudder, packer)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    return "\n".join([line(HEADER), "  ".join("-" * w for w in widths), *map(line, body)])


def markdown_table(rudder: Sequence[RunRecord], packer: Sequence[RunRecord]) -> str:
    def row(cells: list[str]) -> str:
        label = (
            cells[0].replace("  ", "&nbsp;&nbsp;↳ ", 1) if cells[0].startswith("  ") else cells[0]
        )
        return "| " + " | ".join([label, *cells[1:]]) + " |"

    lines = [row(HEADER), "|" + "---|" + "--:|" * (len(HEADER) - 1)]
    return "\n".join(lines + [row(r) for r in rows(rudder, packer)])


def run_lines(runs: Sequence[RunRecord]) -> list[str]:
    """One line per run, in the order they ran."""
    out = []
    for r in sorted(runs, key=lambda r: (r.index, r.tool != "RudderVirt")):
        total, overhead = r.phases.get("total"), r.phases.get("overhead")
        boot = r.phases.get("boot_to_ssh")
        out.append(
            f"run {r.index} {r.tool:<10} total {total:6.2f} s, boot→SSH {boot:6.2f} s, "
            f"overhead {overhead:5.2f} s (load {r.load1:.2f}, other running VMs "
            f"{r.busy_domains})"
        )
    return out
