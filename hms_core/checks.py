"""One place for argument validation messages, in MNE's style.

``check_option("phase", "foo", ("zero", "minimum"))`` raises
``ValueError: Invalid value for the 'phase' parameter. Allowed values are 'zero', 'minimum', but got 'foo' instead.``
Every module that rejects a parameter value calls one of these, so the wording is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["check_option", "check_range", "invalid_value"]


def invalid_value(parameter: str, value: Any, allowed: str) -> ValueError:
    """The error for ``parameter`` = ``value`` where ``allowed`` describes what would be accepted."""
    return ValueError(
        f"Invalid value for the '{parameter}' parameter. Allowed values are {allowed}, but got {value!r} instead."
    )


def check_option(parameter: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise :func:`invalid_value`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise invalid_value(parameter, value, ", ".join(repr(a) for a in allowed))
    return value


def check_range(
    parameter: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
    """Return ``value`` if it lies in the (optionally open) interval ``[low, high]``, else raise."""
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        lb = "[" if low_inclusive and low is not None else "("
        hb = "]" if high_inclusive and high is not None else ")"
        raise invalid_value(parameter, value, f"numbers in {lb}{lo}, {hi}{hb}")
    return value
