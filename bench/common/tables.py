"""Plain-text tables for the scripts' printed reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned; ``-`` for None."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(str(h)), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = []
    for row in [list(map(str, headers)), *cells]:
        first = row[0].ljust(widths[0])
        lines.append(
            "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        )
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def dict_table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``title`` and a :func:`table` of the ``columns`` of dict rows (blank where missing)."""
    return f"\n{title}\n" + table(columns, [[row.get(c, "") for c in columns] for row in rows])
