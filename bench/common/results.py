"""Result files under ``bench/results/``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import BASE_DIR

RESULTS_DIR = BASE_DIR / "bench" / "results"


def shown(path: Path | str) -> str:
    """``path`` relative to the repository when it is inside it, else as given."""
    path = Path(path)
    resolved = path.resolve()
    return str(resolved.relative_to(BASE_DIR) if resolved.is_relative_to(BASE_DIR) else path)


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments for a report, paths as :func:`shown` writes them."""
    return {
        key: shown(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }


def write_json(path: Path | str, report: Any, *, announce: bool = True) -> Path:
    """Write ``report`` as indented JSON (values JSON lacks as ``str``); print where, unless
    ``announce`` is false (a report saved again as a run goes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if announce:
        print(f"wrote {shown(path)}")
    return path
