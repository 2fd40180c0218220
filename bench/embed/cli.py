"""The command line of ``bench/embed_bench.py``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.common import DATA_DIR
from bench.common.results import RESULTS_DIR

OUTPUT = RESULTS_DIR / "embed-throughput.json"
#: ``pool:concurrency:threads`` of the worker configurations compared at the base batch size.
E2E_CONFIGS = "prefork:1:2,prefork:2:1,prefork:2:2,solo:1:2"
#: Why ``--binary-writes`` only takes ``none`` now.
BINARY_WRITES_GONE = (
    "the pipeline's _write sends the vector as a binary parameter itself now "
    "(visualsearch.ingest.pipeline._write), so there is no proposed write path left to run "
    "the worker with: every e2e run measures the app's _write, and the write probe "
    "(--write-probe) times it against the old text UPDATE"
)


def int_list(text: str) -> list[int]:
    values = [int(value) for value in text.split(",") if value.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def configs(text: str) -> list[tuple[str, int, int]]:
    """``pool:concurrency:threads,…`` (``none`` or an empty item: nothing)."""
    result: list[tuple[str, int, int]] = []
    for item in text.split(","):
        if item in {"none", ""}:
            continue
        pool, concurrency, threads = item.split(":")
        if pool not in {"prefork", "solo", "threads"}:
            raise argparse.ArgumentTypeError(f"unknown pool {pool!r}")
        result.append((pool, int(concurrency), int(threads)))
    return result


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=Path, default=DATA_DIR / "images", help="photo folder")
    parser.add_argument("--csv", type=Path, default=DATA_DIR / "products.csv", help="catalog")
    parser.add_argument("--limit", type=int, help="e2e on the first N catalog rows only")
    parser.add_argument("--quick", action="store_true", help="--limit 500, 2 rounds of 0.5 s")
    parser.add_argument("--bare-images", type=int, default=64, help="photo pool of part 2 (64)")
    parser.add_argument("--decode-images", type=int, default=1000, help="photos of part 1")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 8, 32], help="bare batches")
    parser.add_argument("--threads", type=int_list, default=[1, 2], help="bare thread counts")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (3)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="per trial (1.0)")
    parser.add_argument(
        "--e2e-configs", type=configs, default=configs(E2E_CONFIGS), help=f"({E2E_CONFIGS})"
    )
    parser.add_argument(
        "--e2e-batch-sizes",
        type=int_list,
        default=[32, 8, 128],
        help="task batch sizes: the first for every config, the others with the best (32,8,128)",
    )
    parser.add_argument(
        "--binary-writes",
        default="none",
        help="only 'none' (the default): the binary _write A/B was dropped, the app writes "
        "vectors in binary itself",
    )
    parser.add_argument(
        "--binary-batch-sizes", type=int_list, help="dropped with the binary _write A/B"
    )
    parser.add_argument(
        "--e2e-repeats", type=int, default=1, help="runs of every worker case, round-robin (1)"
    )
    parser.add_argument(
        "--breakdown", type=int, default=320, help="images of the in-process breakdown (0: off)"
    )
    parser.add_argument(
        "--write-probe", type=int, default=320, help="rows of the vector-write probe (0: off)"
    )
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch EfficientNet")
    parser.add_argument("--skip-clip", action="store_true")
    parser.add_argument("--skip-clip-onnx", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-inline", action="store_true")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.binary_writes != "none" or args.binary_batch_sizes:
        parser.error(f"--binary-writes/--binary-batch-sizes: {BINARY_WRITES_GONE}")
    if args.quick:
        args.limit = args.limit or 500
        args.rounds, args.min_seconds = min(args.rounds, 2), min(args.min_seconds, 0.5)
        args.decode_images = min(args.decode_images, 200)
        args.breakdown = min(args.breakdown, 160)
        args.write_probe = min(args.write_probe, 160)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    args.torch = not args.skip_torch
    args.clip_onnx = not args.skip_clip_onnx
    return args
