"""The product page's hot paths at 1280 dimensions, today's path against the new one.

Every query runs each path once untimed (warm pages), then every path timed in a shuffled
order, the baseline (:func:`bench.query.baseline.today`) and the new path side by side.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import numpy as np

from bench.common.stats import median, percentile, timed
from bench.query.baseline import today


def exact_similar(matrix: np.ndarray, pks: np.ndarray, me: int, k: int, rows=None) -> set:
    """The ``k`` products nearest by cosine to product ``me`` (unit rows of ``matrix``, one
    a product, in ``pks`` order), among ``rows`` (indices) if given, itself left out."""
    own = int(np.flatnonzero(pks == me)[0])
    pool = np.arange(len(pks)) if rows is None else np.asarray(rows)
    pool = pool[pool != own]
    scores = matrix[pool] @ matrix[own]
    top = pool[np.argsort(-scores, kind="stable")[:k]]
    return {int(pks[i]) for i in top}


def measure(paths: dict[str, Callable[[int], list]], queries: int, seed: int) -> dict:
    """``{path: {"p50_ms", "p95_ms", "found", "errors"}}``: each path is ``f(i)`` for query
    ``i``; baseline and new variants are two paths. A path that raises is recorded once with
    its error and left out of later queries."""
    rng = random.Random(seed)
    lat: dict[str, list[float]] = {name: [] for name in paths}
    found: dict[str, list[list]] = {name: [] for name in paths}
    errors: dict[str, str] = {}
    order = list(paths)
    for i in range(queries):
        live = [name for name in order if name not in errors]
        for name in live:  # untimed: every path reads its pages first
            try:
                paths[name](i)
            except Exception as error:  # noqa: BLE001 - recorded in the results
                errors[name] = f"{type(error).__name__}: {str(error)[:200]}"
        rng.shuffle(order)
        for name in [name for name in order if name not in errors]:
            ms, result = timed(paths[name], i)
            lat[name].append(ms)
            found[name].append([product.pk for product in result])
    return {
        name: {
            "p50_ms": round(median(lat[name]), 2) if lat[name] else None,
            "p95_ms": round(percentile(lat[name], 0.95), 2) if lat[name] else None,
            "queries": len(lat[name]),
            "found": found[name],
            **({"error": errors[name]} if name in errors else {}),
        }
        for name in paths
    }


def both(name: str, function: Callable[[int], list], context=contextlib.nullcontext) -> dict:
    """``{name: new path, "baseline " + name: today's path}`` of ``function``."""

    def old(i: int) -> list:
        with today(), context():
            return function(i)

    def new(i: int) -> list:
        with context():
            return function(i)

    return {name: new, f"baseline {name}": old}


def recall(found: list[list], truths: list[set], k: int) -> float:
    """Mean recall@k of the found pks against the exact sets."""
    pairs = zip(found, truths, strict=True)
    values = [len(set(f[:k]) & t) / max(1, min(k, len(t))) for f, t in pairs]
    return round(float(np.mean(values)), 4) if values else float("nan")


def summary(results: dict, keys: dict[str, str], recalls: dict[str, float]) -> dict:
    """The issue's keys (``similar_p50_ms``…) for the new path, and under ``baseline`` for
    today's; ``keys`` maps each key to its path name."""

    def pick(prefix: str) -> dict:
        out = {}
        for key, path in keys.items():
            out[key] = results[prefix + path]["p50_ms"]
        out["filtered_recall"] = recalls.get(prefix + keys["filtered_p50_ms"])
        return out

    return {**pick(""), "baseline": pick("baseline ")}


def table(results: dict) -> str:
    """A plain table of the measured paths."""
    lines = [f"{'path':<48}{'p50 ms':>9}{'p95 ms':>9}  note"]
    for name, row in results.items():
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.2f}"
        p95 = "-" if row["p95_ms"] is None else f"{row['p95_ms']:.2f}"
        lines.append(f"{name:<48}{p50:>9}{p95:>9}  {row.get('error', '')}")
    return "\n".join(lines)
