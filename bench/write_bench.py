"""What storing one vector costs: the pipeline's binary write against the ORM's text write.

    VISUALSEARCH_DB_NAME=vs_write_bench .venv/bin/python bench/write_bench.py [--rows 500]

Creates (migrates) its own database on the embedded server, inserts ``--rows`` image rows
without files, then alternates the two write paths over the same rows for ``--rounds``
rounds, each row in its own transaction as in the worker's batches (one commit per batch is
measured too). Prints ms per row and writes ``bench/results/write-path.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.common.stats import median  # noqa: E402
from bench.common.vectors import orm_text_write  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    setup_django("vs_write_bench")
    from django.core.management import call_command
    from django.db import transaction

    from shop.catalog.models import Category, Product, ProductImage
    from visualsearch.encoders import get_encoder
    from visualsearch.ingest.pipeline import _write

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
        return orm_text_write(ProductImage, pk, name, vector, "0" * 64, "bench")

    def pipeline_write(pk, name, vector):
        return _write(ProductImage, pk, name, vector, "0" * 64, "bench")

    def run(write) -> float:
        started = time.perf_counter()
        with transaction.atomic():  # one batch, one commit, as embed_images does
            for image, vector in zip(images, vectors, strict=True):
                assert write(image.pk, image.image.name, vector)
        return (time.perf_counter() - started) * 1000 / len(images)

    results: dict[str, list[float]] = {"orm_text": [], "binary": []}
    run(orm_write), run(pipeline_write)  # warm both paths (adapters, plans)
    for _ in range(args.rounds):
        results["orm_text"].append(run(orm_write))
        results["binary"].append(run(pipeline_write))
    summary = {name: median(values) for name, values in results.items()}
    print(f"{dims}-d vectors, {args.rows} rows per round, {args.rounds} rounds (median ms/row)")
    for name, value in summary.items():
        print(f"  {name:9s} {value:6.2f} ms/row   {[round(v, 2) for v in results[name]]}")
    print(f"  ratio orm/binary: {summary['orm_text'] / summary['binary']:.2f}x")
    report = {
        "machine": machine(),
        "load_average": load_average(),
        "dimensions": dims,
        "args": vars(args),
        "ms_per_row": results,
        "median_ms_per_row": summary,
        "ratio_orm_over_binary": summary["orm_text"] / summary["binary"],
    }
    write_json(RESULTS_DIR / "write-path.json", report)


if __name__ == "__main__":
    main()
