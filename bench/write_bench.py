"""What storing one vector costs: the pipeline's binary write against the ORM's text write.

    VISUALSEARCH_DB_NAME=vs_write_bench .venv/bin/python bench/write_bench.py [--rows 500]

Creates (migrates) its own database on the embedded server, inserts ``--rows`` image rows
without files, then alternates the two write paths over the same rows for ``--rounds``
rounds, each row in its own transaction as in the worker's batches (one commit per batch is
measured too). Prints ms per row and writes ``bench/results/write-path.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
os.environ.setdefault("VISUALSEARCH_DB_NAME", "vs_write_bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction
    from django.utils import timezone

    from shop.catalog.models import Category, Product, ProductImage
    from visualsearch.encoders import get_encoder
    from visualsearch.models import EmbeddingStatus
    from visualsearch.pipeline import _write

    call_command("migrate", verbosity=0)
    dims = get_encoder().dimensions
    ProductImage.objects.all().delete()
    Product.objects.all().delete()
    category, _ = Category.objects.get_or_create(name="Bench", slug="bench")
    products = Product.objects.bulk_create(
        Product(name=f"p{i}", slug=f"p{i}", category=category) for i in range(args.rows)
    )
    images = ProductImage.objects.bulk_create(
        ProductImage(product=p, image=f"bench/{p.pk}.jpg") for p in products
    )
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.rows, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def orm_write(pk, name, vector):
        now = timezone.now()
        return ProductImage._base_manager.filter(pk=pk, image=name).update(
            embedding=vector,
            embedding_model="bench",
            embedding_hash="0" * 64,
            embedding_status=EmbeddingStatus.READY,
            embedding_error="",
            embedded_at=now,
            embedding_updated_at=now,
        )

    def binary_write(pk, name, vector):
        return _write(ProductImage, pk, name, vector, "0" * 64, "bench")

    def run(write) -> float:
        started = time.perf_counter()
        with transaction.atomic():  # one batch, one commit, as embed_images does
            for image, vector in zip(images, vectors, strict=True):
                assert write(image.pk, image.image.name, vector)
        return (time.perf_counter() - started) * 1000 / len(images)

    results: dict[str, list[float]] = {"orm_text": [], "binary": []}
    run(orm_write), run(binary_write)  # warm both paths (adapters, plans)
    for _ in range(args.rounds):
        results["orm_text"].append(run(orm_write))
        results["binary"].append(run(binary_write))
    summary = {name: statistics.median(values) for name, values in results.items()}
    print(f"{dims}-d vectors, {args.rows} rows per round, {args.rounds} rounds (median ms/row)")
    for name, value in summary.items():
        print(f"  {name:9s} {value:6.2f} ms/row   {[round(v, 2) for v in results[name]]}")
    print(f"  ratio orm/binary: {summary['orm_text'] / summary['binary']:.2f}x")
    out = BASE_DIR / "bench" / "results" / "write-path.json"
    out.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "load_average": os.getloadavg(),
                "dimensions": dims,
                "args": vars(args),
                "ms_per_row": results,
                "median_ms_per_row": summary,
                "ratio_orm_over_binary": summary["orm_text"] / summary["binary"],
            },
            indent=2,
        )
    )
    print(f"wrote {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
