"""The metrics of :func:`bench.search_quality.metrics.evaluate` as a plain-text table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.search_quality.metrics import MAP_NOTE


def format_table(report: Mapping[str, Any]) -> str:
    """The metrics as a plain-text table, one column per scope."""
    k, scopes = report["k"], list(report["scopes"].values())
    first = scopes[0] if scopes else {}
    rows: list[tuple[str, str, list[Any]]] = [  # (name, format, one value per scope)
        ("queries", ",", [s["queries"] for s in scopes]),
        ("searchable products", ",", [s["searchable_products"] for s in scopes]),
    ]
    for key, title in (
        ("precision_at_k", "precision@{k} {level}"),
        ("map_at_k", "mAP@{k} {level}"),
        ("chance_precision_at_k", "chance precision@{k} {level}"),
    ):
        for level in first.get(key, {}):
            rows.append((title.format(k=k, level=level), ".3f", [s[key][level] for s in scopes]))
    rows += [
        (f"recall@{k} HNSW vs exact", ".3f", [s["recall_at_k_hnsw_vs_exact"] for s in scopes]),
        ("self-match (own vector, d<1e-4)", ".3f", [s["self_match"] for s in scopes]),
        ("  of which strictly first", ".3f", [s["self_match_strictly_first"] for s in scopes]),
        (f"short result lists (<{k})", ",", [s["short_result_lists"] for s in scopes]),
        ("similar_products p50 ms", ".1f", [s["latency_ms"]["p50"] for s in scopes]),
        ("similar_products p95 ms", ".1f", [s["latency_ms"]["p95"] for s in scopes]),
        ("evaluation seconds", ".0f", [s["seconds"] for s in scopes]),
    ]
    names = list(report["scopes"])
    width = max(len(name) for name, _, _ in rows) + 2
    columns = [max(len(name), 8) + 2 for name in names]
    lines = [
        f"{report['encoder']} ({report['dimensions']}-d), k={k}, "
        f"{report['ready_products']:,} of {report['products']:,} products embedded",
        " " * width + "".join(name.rjust(c) for name, c in zip(names, columns, strict=True)),
    ]
    for name, spec, values in rows:
        cells = ["-" if v is None else format(v, spec) for v in values]
        row = "".join(cell.rjust(c) for cell, c in zip(cells, columns, strict=True))
        lines.append(name.ljust(width) + row)
    lines.append(MAP_NOTE + ".")
    if timings := report.get("timings"):
        lines.append(
            "timings (s): " + ", ".join(f"{key} {value}" for key, value in timings.items())
        )
    return "\n".join(lines)
