"""Part 3's references, on the bench database after the worker runs: the HNSW index built in
bulk, what storing one vector costs, and where the time of ``embed_images`` goes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from bench.common.stats import median
from bench.common.vectors import orm_text_write
from bench.embed.meters import CpuMeter
from bench.embed.worker import E2E


def hnsw_build(bench: E2E) -> dict[str, Any]:
    """Seconds to build the HNSW index in bulk over the stored vectors (``REINDEX``)."""
    from django.db import connection
    from pgvector.django import HnswIndex

    names = [index.name for index in bench.model._meta.indexes if isinstance(index, HnswIndex)]
    rows = bench.model._base_manager.exclude(embedding=None).count()
    meter = CpuMeter(bench.process_roots())
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


def write_probe(bench: E2E, images: int, rounds: int = 2) -> list[dict[str, Any]]:
    """What storing a vector costs: the app's ``_write`` (binary parameter), and references.

    Real vectors (read back from the last run) written into an emptied index in batches
    of 32, one transaction each, like the pipeline; every variant starts from a reset and
    is checked to have written every row. Leaves the rows ``pending``.
    """
    from django.db import connection, transaction
    from django.utils import timezone
    from pgvector.django import HnswIndex

    import visualsearch.ingest.pipeline as pipeline

    model = bench.model
    pks = bench.pks[:images]
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
        ("app _write (vector as a binary parameter)", writer(pipeline._write), False),
        ("reference: ORM UPDATE, vector as text (the old _write)", writer(orm_text_write), False),
        ("reference: same UPDATE without the vector", without_vector, False),
        ("reference: app _write, no HNSW index", writer(pipeline._write), True),
    ]
    results: dict[str, list[tuple[float, float, float]]] = {v[0]: [] for v in variants}
    for index in range(rounds):
        for label, write, drop_index in variants if index % 2 == 0 else variants[::-1]:
            bench.reset()
            if drop_index:
                with connection.schema_editor() as editor:
                    for item in hnsw:
                        editor.remove_index(model, item)
            try:
                meter = CpuMeter(bench.process_roots())
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
    bench.reset()
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


def breakdown(bench: E2E, batch: int, images: int) -> dict[str, Any]:
    """In-process ``embed_images`` over ``images`` rows: encoder vs writes vs the rest."""
    import visualsearch.ingest.pipeline as pipeline
    from visualsearch.encoders import get_encoder

    bench.reset()
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

    pks = bench.pks[:images]
    encoder.encode_images = encode_images
    pipeline._write = write
    meter = CpuMeter(bench.process_roots())
    try:
        started = time.perf_counter()
        for start in range(0, len(pks), batch):
            pipeline.embed_images(pks[start : start + batch], model=bench.model, force=True)
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
