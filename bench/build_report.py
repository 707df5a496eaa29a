"""Tables of the build benchmark: median and minimum per phase, per tool (text or markdown)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.build_phases import PHASES

Phases = Mapping[str, float | None]


@dataclass
class RunRecord:
    tool: str  # "RudderVirt", "Packer" or "Packer lean"
    index: int
    load1: float  # 1-minute load average when the run started
    busy_domains: int  # other running libvirt domains when the run started
    phases: Phases = field(default_factory=dict)


def _values(runs: Sequence[RunRecord], key: str) -> list[float]:
    return [v for r in runs if (v := r.phases.get(key)) is not None]


def _cell(values: list[float], how: Callable[[list[float]], float]) -> str:
    return f"{how(values):.2f}" if values else "-"


Groups = Mapping[str, Sequence[RunRecord]]  # tool name -> its runs, in column order


def rows(groups: Groups) -> list[list[str]]:
    """One row per phase: label, then median and min of each tool in turn."""
    table = []
    for key, label in PHASES:
        cells = [label]
        for runs in groups.values():
            values = _values(runs, key)
            cells += [_cell(values, statistics.median), _cell(values, min)]
        table.append(cells)
    return table


def header(groups: Groups) -> list[str]:
    return ["phase (seconds)"] + [f"{tool} {how}" for tool in groups for how in ("median", "min")]


def text_table(groups: Groups) -> str:
    head, body = header(groups), rows(groups)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)])

    return "\n".join([line(head), "  ".join("-" * w for w in widths), *map(line, body)])


def markdown_table(groups: Groups) -> str:
    def row(cells: list[str]) -> str:
        label = (
            cells[0].replace("  ", "&nbsp;&nbsp;↳ ", 1) if cells[0].startswith("  ") else cells[0]
        )
        return "| " + " | ".join([label, *cells[1:]]) + " |"

    head = header(groups)
    lines = [row(head), "|" + "---|" + "--:|" * (len(head) - 1)]
    return "\n".join(lines + [row(r) for r in rows(groups)])


def run_lines(runs: Sequence[RunRecord]) -> list[str]:
    """One line per run, in the order they ran (the order of ``runs``)."""
    out = []
    for r in runs:
        total, overhead = r.phases.get("total"), r.phases.get("overhead")
        boot = r.phases.get("boot_to_ssh")
        out.append(
            f"run {r.index} {r.tool:<11} total {total:6.2f} s, boot→SSH {boot:6.2f} s, "
            f"overhead {overhead:5.2f} s (load {r.load1:.2f}, other running VMs "
            f"{r.busy_domains})"
        )
    return out
