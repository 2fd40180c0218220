"""The ground truth: label columns of a catalog CSV, by external id."""

from __future__ import annotations

import csv
from pathlib import Path

ID_COLUMNS = ("id", "external_id")  # as import_catalog reads them
LEVELS = ("articleType", "subCategory", "masterCategory")  # label columns, finest first
REQUIRED_LEVELS = ("articleType", "subCategory")


def load_labels(csv_path: Path, limit: int | None = None) -> dict[str, dict[str, str | None]]:
    """``{external id: {"articleType": …, "subCategory": …, "masterCategory": …}}`` from the CSV.

    ``limit`` keeps the first ``limit`` distinct ids, like ``import_catalog --limit``. Empty
    values become ``None`` (never a match). Raises ``ValueError`` when columns are missing.
    """
    labels: dict[str, dict[str, str | None]] = {}
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        id_column = next((column for column in ID_COLUMNS if column in header), None)
        missing = [column for column in REQUIRED_LEVELS if column not in header]
        if id_column is None or missing:
            wanted = ([] if id_column else [" or ".join(ID_COLUMNS)]) + missing
            raise ValueError(f"{csv_path} lacks the label column(s) {', '.join(wanted)}.")
        levels = [level for level in LEVELS if level in header]
        for row in reader:
            external_id = (row.get(id_column) or "").strip()
            if not external_id or external_id in labels:
                continue
            if limit is not None and len(labels) >= limit:
                break
            labels[external_id] = {
                level: (row.get(level) or "").strip() or None for level in levels
            }
    return labels
