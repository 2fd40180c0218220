"""Medians, percentiles and timings, the same way in every script."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def median(values: Iterable[float]) -> float:
    """``statistics.median``, or NaN for no values."""
    values = list(values)
    return statistics.median(values) if values else float("nan")


def percentile(values: Iterable[T], q: float) -> T | float:
    """The value at rank ``int(q * n)`` of the sorted values (no interpolation), NaN for none.

    ``q`` is a fraction: 0.95 for p95. The value is one of ``values``, of its type.
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interpolated_percentile(values: Iterable[float], q: float) -> float:
    """numpy's percentile (linear interpolation between ranks), NaN for none; ``q`` a fraction."""
    import numpy as np

    values = list(values)
    return float(np.percentile(values, 100 * q)) if values else float("nan")


def rounded(value: float, digits: int = 1) -> float | None:
    """``value`` rounded, ``None`` for NaN (JSON has no NaN)."""
    return None if value != value else round(value, digits)


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """``(milliseconds, result)`` of ``call(*args, **kwargs)``."""
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return (time.perf_counter() - started) * 1000, result
