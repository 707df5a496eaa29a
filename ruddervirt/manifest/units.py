"""Go-style durations and Kubernetes-style quantities, as the manifest writes them.

The regular expressions here are the same grammar as the patterns in schema.json; the
parsers turn already-valid text into numbers and raise ValueError otherwise.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

# Go's time.ParseDuration without the sign: "1h30m", "1.5h", "90s", "300ms", a bare "0".
_DURATION = re.compile(r"0|(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_SECONDS_PER_UNIT = {
    "ns": Decimal("1e-9"),
    "us": Decimal("1e-6"),
    "µs": Decimal("1e-6"),  # U+00B5 MICRO SIGN
    "μs": Decimal("1e-6"),  # U+03BC GREEK SMALL LETTER MU
    "ms": Decimal("1e-3"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
}
# Go durations are int64 nanoseconds: about 2562047 hours.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9

# Kubernetes resource.Quantity: number, then a binary or decimal suffix or an exponent.
_QUANTITY = re.compile(
    r"\+?(?P<number>\d+(?:\.\d*)?|\.\d+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
MAX_QUANTITY = Decimal(2**63 - 1)


class OutOfRange(ValueError):
    """Well-formed, but too large to mean anything."""


def parse_duration(value: str | int) -> float:
    """Seconds in a duration like "1h30m" (or the integer 0). Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        if value != 0:
            raise ValueError("a duration needs a unit, e.g. 90s")
        return 0.0
    if not _DURATION.fullmatch(value):
        raise ValueError(f"not a duration: {value!r}")
    total = sum(
        (
            Decimal(number) * _SECONDS_PER_UNIT[unit]
            for number, unit in _DURATION_PART.findall(value)
        ),
        Decimal(0),
    )
    if total > Decimal(MAX_DURATION_SECONDS):
        raise OutOfRange(f"duration {value!r} is too long (at most 2562047h)")
    return float(total)


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity like "512Mi", "0.5", "500m", "1e3" or a plain number.
    Raises ValueError for anything else, for negative values and for absurdly large ones."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a quantity: {value!r}")
        result = Decimal(value)
    else:
        match = _QUANTITY.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"not a quantity: {value!r}")
        result = _scaled(Decimal(match["number"]), match["suffix"] or "")
    if result > MAX_QUANTITY:
        raise OutOfRange(f"{value!r} is too large")
    return result


def _scaled(number: Decimal, suffix: str) -> Decimal:
    try:
        if suffix in _BINARY:
            return number * Decimal(1024) ** _BINARY[suffix]
        if suffix in _DECIMAL:
            return number.scaleb(_DECIMAL[suffix])
        if suffix:
            digits = suffix[1:].lstrip("+-").lstrip("0") or "0"
            negative = suffix[1] == "-"
            if len(digits) > 3:  # keeps Decimal arithmetic small; far beyond any size
                return Decimal(0) if negative else MAX_QUANTITY + 1
            return number.scaleb(-int(digits) if negative else int(digits))
        return number
    except InvalidOperation as exc:  # pragma: no cover - guarded by the exponent bound
        raise ValueError("quantity out of range") from exc


def quantity_bytes(value: str | int | float) -> int:
    """A size in whole bytes (fractions round up, as Kubernetes does)."""
    return math.ceil(parse_quantity(value))


def vcpus(value: str | int | float) -> int:
    """vCPUs for `resources.cpu`: ceil of the quantity, at least 1."""
    return max(1, math.ceil(parse_quantity(value)))
