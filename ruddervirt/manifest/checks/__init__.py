"""Semantic checks: the rules of the manifest that JSON Schema cannot express."""

from __future__ import annotations

from ruddervirt.fetchpolicy import FetchPolicy
from ruddervirt.manifest.checks.base import Raw, Reporter
from ruddervirt.manifest.checks.files import check_files
from ruddervirt.manifest.checks.limits import check_limits
from ruddervirt.manifest.checks.network import check_network
from ruddervirt.manifest.checks.sources import check_sources
from ruddervirt.manifest.checks.steps import check_steps
from ruddervirt.manifest.checks.vm import check_vms
from ruddervirt.manifest.limits import Limits
from ruddervirt.manifest.loader import PositionIndex
from ruddervirt.manifest.problems import Problem

_CHECKS = (check_files, check_network, check_vms, check_steps)


def semantic_problems(
    data: Raw, index: PositionIndex, limits: Limits, fetch_policy: FetchPolicy | None = None
) -> list[Problem]:
    """Every semantic error and warning, values over `limits` included, and URLs refused by
    `fetch_policy` (when given). Tolerates data the schema rejected."""
    report = Reporter(index)
    for check in _CHECKS:
        check(report, data)
    check_limits(report, data, limits)
    check_sources(report, data, fetch_policy)
    return report.problems
