"""Precision@k of similar products by category, through the app's own query path.

Every product with a ready embedding is a query; ``visualsearch.query.similar_products``
(the HNSW query the product page uses, the product itself excluded) returns k products; a hit
is a product of the same category (the demo import maps ``articleType`` to the category).

    .venv/bin/python bench/precision.py            # the demo database (make demo loads it)
    .venv/bin/python bench/precision.py --k 10 --limit 500

Prints the figures and writes ``bench/results/precision-<encoder>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.common.stats import median, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N products")
    args = parser.parse_args()

    setup_django()
    from tqdm import tqdm

    from shop.catalog.models import Product
    from visualsearch.encoders import get_encoder
    from visualsearch.query import similar_products

    encoder = get_encoder()
    products = list(
        Product.objects.filter(
            images__embedding_status="ready", images__embedding_model=encoder.model_id
        )
        .distinct()
        .order_by("pk")
    )[: args.limit]
    chance = {}
    for product in products:
        chance[product.category_id] = chance.get(product.category_id, 0) + 1
    precisions, latencies = [], []
    for product in tqdm(products, unit="query", file=sys.stderr):
        ms, results = timed(similar_products, product, k=args.k)
        latencies.append(ms)
        hits = sum(1 for other in results if other.category_id == product.category_id)
        precisions.append(hits / args.k)
    n = len(products)
    expected = sum(c * (c - 1) for c in chance.values()) / max(n * (n - 1), 1)
    report = {
        "encoder": encoder.model_id,
        "queries": n,
        "k": args.k,
        f"precision@{args.k}_by_category": round(statistics.fmean(precisions), 4) if n else None,
        "chance": round(expected, 4),
        "categories": len(chance),
        "latency_ms_p50": round(median(latencies), 2) if n else None,
    }
    print(json.dumps(report, indent=2))
    write_json(RESULTS_DIR / f"precision-{encoder.model_id.split(':')[0]}.json", report)


if __name__ == "__main__":
    main()
