"""Go durations and Kubernetes quantities, and the schema's patterns for them."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from ruddervirt.manifest import schema
from ruddervirt.manifest.units import (
    OutOfRange,
    parse_duration,
    parse_quantity,
    quantity_bytes,
    vcpus,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        (0, 0.0),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (".5m", 30.0),
        ("300ms", 0.3),
        ("1h1m1s1ms", 3661.001),
        ("2us", 2e-6),
        ("2µs", 2e-6),
        ("3ns", 3e-9),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "5", "5 minutes", "1d", "-5m", "1H", "h", "1.h2", True, 5, "0s0"]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


def test_duration_beyond_go_range_is_out_of_range() -> None:
    with pytest.raises(OutOfRange):
        parse_duration("3000000h")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("512Mi", 512 * 1024**2),
        ("20Gi", 20 * 1024**3),
        ("1Ki", 1024),
        ("1Ei", 1024**6),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("500m", Decimal("0.5")),
        ("1e3", 1000),
        ("1E3", 1000),
        ("15e-1", Decimal("1.5")),
        ("1.5Gi", 1024**3 * 3 // 2),
        ("+2", 2),
        ("1024", 1024),
        (1024, 1024),
        (0.5, Decimal("0.5")),
    ],
)
def test_quantities(text: str | int | float, value: object) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text", ["", "Gi", "1 Gi", "1gi", "1GiB", "-1", "1.2.3", "1e", True, -1, float("inf")]
)
def test_bad_quantities(text: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["1e30", "9Ei", "1e" + "9" * 5000])
def test_absurd_quantities_are_out_of_range(text: str) -> None:
    with pytest.raises(OutOfRange):
        parse_quantity(text)


def test_bytes_round_up_and_vcpus_are_at_least_one() -> None:
    assert quantity_bytes("1.5") == 2
    assert vcpus("500m") == 1
    assert vcpus("1500m") == 2
    assert vcpus(2.1) == 3
    assert vcpus("0.1") == 1


@pytest.mark.parametrize("definition", ["duration", "quantity"])
def test_schema_patterns_agree_with_the_parsers(definition: str) -> None:
    pattern = re.compile(schema()["$defs"][definition]["pattern"])  # type: ignore[index]
    parse = parse_duration if definition == "duration" else parse_quantity
    samples = [
        "0",
        "90s",
        "1h30m",
        "1.5h",
        "300ms",
        "5",
        "1d",
        "5 m",
        "512Mi",
        "1e3",
        "500m",
        "1gi",
        "+1",
        ".5",
    ]
    for sample in samples:
        try:
            parse(sample)
            parsed = True
        except ValueError:
            parsed = False
        assert bool(pattern.search(sample)) == parsed, sample
