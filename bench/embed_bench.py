"""Embedding throughput: the encoders alone, file read + decode, and the real Celery worker.

    .venv/bin/python bench/embed_bench.py           # everything: ~14 min on 2 cores (+30 s import)
    .venv/bin/python bench/embed_bench.py --quick   # ~2.5 min: 500 catalog rows, shorter trials
    .venv/bin/python bench/embed_bench.py --skip-clip --skip-e2e    # EfficientNet alone, ~1 min
    .venv/bin/python bench/embed_bench.py --skip-decode --skip-bare \
        --e2e-configs prefork:1:2,prefork:2:1 --e2e-batch-sizes 32,128 --e2e-repeats 3 \
        --skip-inline --write-probe 0 --breakdown 0 \
        --output bench/results/embed-throughput-repeats.json    # worker cases, repeated

Three parts, on real photos (``../shared/data/fashion-products/images``, 224x224 JPEG):

1. **decode** (:mod:`bench.embed.decode`): what the pipeline does per image before the
   encoder: file read, SHA-256, ``visualsearch.ingest.images.decode_image`` (one core,
   page-cached files).
2. **bare** (:mod:`bench.embed.bare`, :mod:`bench.embed.encoders`): images/s of an encoder
   alone on decoded PIL images (its own preprocessing included), at batch 1, 8, 32 and 1 or 2
   threads (``torch.set_num_threads`` / ORT ``intra_op_num_threads``): the app's
   ``EfficientNetLite0Encoder`` (ONNX Runtime) and the same network in plain PyTorch (built as
   ``export_onnx`` builds it, ReLU6 kept); CLIP ViT-B/32's image tower (real architecture,
   random weights: there is no hub here) in PyTorch and exported to ONNX Runtime (legacy
   exporter, opset 17). The configurations of a network are interleaved round by round, so a
   noisy neighbour slows them alike: figures are medians of the rounds, ratios (ONNX/PyTorch,
   2/1 threads) medians of per-round ratios.
3. **e2e** (:mod:`bench.embed.e2e`, :mod:`bench.embed.worker`, :mod:`bench.embed.probes`):
   the catalog re-embedded by the real ``celery -A shop worker`` (a subprocess with a private
   ``redis-server``, the database ``bench_embed`` on the embedded Postgres, media under
   ``media/bench/``; imported once with ``import_catalog --defer-embedding``). Before each run
   every row is reset to ``pending`` without a vector (HNSW index rebuilt empty, table
   vacuumed) and the worker is started and warm; the run is timed from
   ``visualsearch.ingest.tasks.enqueue(..., force=True)`` (what ``visualsearch_reindex --all
   --enqueue`` sends) until every row is ``ready``. Cases: prefork ``--concurrency`` 1/2 with
   ``VISUALSEARCH_ENCODER_THREADS`` 2/1 (and 2/2), ``--pool solo``; the fastest of those with
   other task batch sizes; ``--e2e-repeats N`` repeats every case round-robin and reports
   medians. Then, for reference: the inline ``manage.py visualsearch_reindex --all``, the HNSW
   index built in bulk (``REINDEX``), a probe of what storing one vector costs (the app's
   binary ``_write`` against the ORM's text UPDATE it replaced), and an in-process breakdown
   of ``embed_images``. CPU seconds of the worker, Postgres and Redis process trees come from
   psutil. "ratio" is against bare EfficientNet ONNX with 2 threads (the whole 2-core
   machine), same batch.

The worker A/B with a proposed binary ``_write`` is gone: the pipeline writes vectors in
binary itself now (``--binary-writes`` takes only ``none``).

Prints tables and writes ``bench/results/embed-throughput.json`` (``--output``). The e2e part
refuses to run with ``DATABASE_URL`` set: it resets every row of its database.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import load_average, machine  # noqa: E402  (after the sys.path fix)
from bench.common.results import plain_args, write_json  # noqa: E402
from bench.embed.cli import parse_args  # noqa: E402
from bench.embed.decode import bench_decode, load_photos  # noqa: E402
from bench.embed.report import format_report  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__.split("\n")[0], argv)
    started = time.perf_counter()
    import onnxruntime
    import torch
    import transformers

    from bench.embed.bare import run_bare
    from bench.embed.e2e import run_e2e

    report: dict[str, Any] = {
        "machine": {
            **machine(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__,
            "load_average_at_start": load_average(),
        },
        "args": plain_args(args),
    }
    photos = load_photos(args.images, max(args.decode_images, args.bare_images))
    if not args.skip_decode:
        report["decode"] = bench_decode(photos[: args.decode_images], rounds=args.rounds)
        print(f"decode: {report['decode']['ms_per_image']} ms/image", flush=True)
    if not args.skip_bare:
        report["bare"] = run_bare(args, photos[: args.bare_images])
    if not args.skip_e2e:
        report["e2e"] = run_e2e(args, report.get("bare", {}), photos[: args.bare_images])
    report["duration_s"] = round(time.perf_counter() - started, 1)
    print(format_report(report))
    print(f"\nfull run: {report['duration_s']:.0f}s")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
