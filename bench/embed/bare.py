"""Part 2: images/s of every encoder configuration alone on decoded photos, interleaved round
by round, and the ratios between them."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from bench.common.stats import median, rounded
from bench.embed.decode import decode_photos
from bench.embed.encoders import (
    ONNX_CACHE,
    Family,
    Runner,
    agreement,
    clip_family,
    efficientnet_family,
)


def bench_family(
    family: Family,
    images: Sequence[Image.Image],
    batch_sizes: Sequence[int],
    rounds: int,
    min_seconds: float,
) -> list[dict[str, Any]]:
    """images/s of every runner at every batch size, interleaved round by round."""
    rows = []
    family.preprocess(images)  # warm
    times = []
    for _ in range(3):
        clock = time.perf_counter()
        family.preprocess(images)
        times.append(time.perf_counter() - clock)
    family.notes["preprocess_ms_per_image"] = round(median(times) * 1000 / len(images), 2)
    for runner in family.runners:  # load and warm every runner once
        runner.prepare()
        runner.encode(images[: max(batch_sizes)])
    family.agreement = agreement(family, images[:16])
    for batch in batch_sizes:
        trials: dict[str, list[float]] = {runner.name: [] for runner in family.runners}
        for index in range(rounds):
            order = family.runners if index % 2 == 0 else family.runners[::-1]
            for runner in order:
                trials[runner.name].append(timed_trial(runner, images, batch, min_seconds))
            print(
                f"  {family.encoder} batch {batch} round {index + 1}/{rounds}: "
                + ", ".join(f"{name} {values[-1]:.1f}" for name, values in trials.items()),
                flush=True,
            )
        for runner in family.runners:
            values = trials[runner.name]
            rows.append(
                {
                    "encoder": runner.encoder,
                    "runtime": runner.runtime,
                    "threads": runner.threads,
                    "batch": batch,
                    "images_per_s": rounded(median(values)),
                    "trials": [round(value, 1) for value in values],
                }
            )
    return rows


def timed_trial(runner: Runner, images: Sequence[Image.Image], batch: int, seconds: float) -> float:
    """images/s of ``runner`` over whole batches for at least ``seconds`` (one batch at least)."""
    runner.prepare()
    done, offset = 0, 0
    start = time.perf_counter()
    while True:
        chunk = [images[(offset + i) % len(images)] for i in range(batch)]
        offset = (offset + batch) % len(images)
        runner.encode(chunk)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def bare_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """ONNX/PyTorch at equal threads, and 2 threads/1 thread, as medians of per-round ratios."""
    index = {(r["encoder"], r["runtime"], r["threads"], r["batch"]): r["trials"] for r in rows}
    ratios = []

    def ratio(kind: str, key: tuple, over: tuple, **fields: Any) -> None:
        if key in index and over in index:
            per_round = [a / b for a, b in zip(index[key], index[over], strict=True)]
            ratios.append(
                {"ratio": kind, **fields, "value": round(median(per_round), 2), "rounds": per_round}
            )

    for encoder, runtime, threads, batch in index:
        if runtime == "onnxruntime":
            ratio(
                "onnx/pytorch",
                (encoder, runtime, threads, batch),
                (encoder, "pytorch", threads, batch),
                encoder=encoder,
                threads=threads,
                batch=batch,
            )
        if threads == 2:
            ratio(
                "2 threads/1 thread",
                (encoder, runtime, 2, batch),
                (encoder, runtime, 1, batch),
                encoder=encoder,
                runtime=runtime,
                batch=batch,
            )
    for item in ratios:
        item["rounds"] = [round(value, 2) for value in item["rounds"]]
    return ratios


def run_bare(args: argparse.Namespace, files: Sequence[Path]) -> dict[str, Any]:
    """Part 2: every encoder family alone on decoded images."""
    images = decode_photos(files)
    report: dict[str, Any] = {"images": len(images), "rows": [], "families": {}}
    builders = [("efficientnet-lite0", lambda: efficientnet_family(args.threads, args.torch))]
    if not args.skip_clip:
        builders.append(("clip-vit-b32", lambda: clip_family(args.threads, args.clip_onnx)))
    for name, build in builders:
        print(f"bare: {name}", flush=True)
        clock = time.perf_counter()
        family = build()
        try:
            rows = bench_family(family, images, args.batch_sizes, args.rounds, args.min_seconds)
        finally:
            family.cleanup()
        report["rows"] += rows
        report["families"][name] = {
            **family.notes,
            "onnx_vs_pytorch_min_cosine": family.agreement,
            "seconds": round(time.perf_counter() - clock, 1),
        }
    report["ratios"] = bare_ratios(report["rows"])
    return report


def bare_reference(
    rows: Sequence[dict[str, Any]],
    batch: int,
    images: Sequence[Image.Image],
    args: argparse.Namespace,
    trials: int = 5,
) -> dict[str, Any]:
    """Bare EfficientNet ONNX images/s, 2 threads, at ``batch``, measured just before the e2e.

    With the app's encoder as the worker builds it (``batch_size`` 32: a larger task batch
    runs as several ONNX batches, like in the worker); the part-2 figure is kept beside it.
    """
    from visualsearch.encoders.efficientnet import EfficientNetLite0Encoder

    encoder = EfficientNetLite0Encoder(threads=2, cache_dir=str(ONNX_CACHE))
    runner = Runner("efficientnet-lite0", "onnxruntime", 2, encoder.encode_images)
    runner.encode(images[:batch])
    values = [timed_trial(runner, images, batch, args.min_seconds) for _ in range(trials)]
    table_value = next(
        (
            row["images_per_s"]
            for row in rows
            if (row["encoder"], row["runtime"], row["threads"], row["batch"])
            == ("efficientnet-lite0", "onnxruntime", 2, batch)
        ),
        None,
    )
    return {
        "images_per_s": rounded(median(values)),
        "trials": [round(value, 1) for value in values],
        "bare_table_images_per_s": table_value,
    }
