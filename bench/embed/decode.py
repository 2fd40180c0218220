"""Part 1: what the pipeline does per image before the encoder (file read, SHA-256, decode)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common.stats import median
from visualsearch.conf import DEFAULTS
from visualsearch.ingest.images import decode_image

MAX_PIXELS = DEFAULTS["MAX_IMAGE_PIXELS"]


def load_photos(folder: Path, count: int) -> list[Path]:
    """The first ``count`` JPEG files of ``folder``, by name."""
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in {".jpg", ".jpeg"})
    if not files:
        raise SystemExit(f"error: no JPEG files in {folder}")
    return files[:count]


def decode_photos(files: Sequence[Path]) -> list[Image.Image]:
    """The photos decoded as the pipeline decodes them."""
    return [decode_image(path.read_bytes(), max_pixels=MAX_PIXELS) for path in files]


def bench_decode(files: Sequence[Path], rounds: int) -> dict[str, Any]:
    """Milliseconds per image of file read, SHA-256 and ``decode_image`` (median of rounds)."""
    stages: dict[str, list[float]] = {"read": [], "sha256": [], "decode": []}
    for _ in range(rounds):
        clock = time.perf_counter()
        blobs = [path.read_bytes() for path in files]
        stages["read"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        for data in blobs:
            hashlib.sha256(data).hexdigest()
        stages["sha256"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        for data in blobs:
            decode_image(data, max_pixels=MAX_PIXELS)
        stages["decode"].append(time.perf_counter() - clock)
    n = len(files)
    ms = {stage: median(times) * 1000 / n for stage, times in stages.items()}
    total = sum(ms.values())
    return {
        "images": n,
        "rounds": rounds,
        "mean_file_kb": round(sum(path.stat().st_size for path in files) / n / 1024, 1),
        "ms_per_image": {stage: round(value, 3) for stage, value in ms.items()},
        "total_ms_per_image": round(total, 3),
        "images_per_s_one_core": round(1000 / total, 1),
        "note": "page-cached files; one core, no threads",
    }
