"""The product page's hot paths at the shop's real dimension (1280-d), today's path and the
new one measured side by side (issue 21).

    # the dev catalog (6,573 EfficientNet-Lite0 image vectors, fused vectors on)
    VISUALSEARCH_DB_NAME=quality_fashion_products_products_0cd27c42_efficientnet \\
      .venv/bin/python bench/hot_paths.py --catalog dev
    # synthetic 100k x 1280 (halfvec HNSW m=32, ef_construction=128), its own database
    VISUALSEARCH_DB_NAME=vs_hot_paths_1280 .venv/bin/python bench/hot_paths.py --catalog synthetic

Paths (each query runs every path once untimed, then every path timed in a shuffled order;
``baseline …`` is today's path, the query functions of :data:`bench.query.baseline.COMMIT`
swapped in): ``similar`` (``similar_products(p, 8)``, the image path: ``FUSION`` off),
``nearest`` (``nearest_products(vector, 8)``: photo search with the query vector given),
``filtered`` (``similar_products(p, 8, category=c)``, ``c`` a category of about 1 in 200 of
the images; recall@8 against exact search among its products), ``recommend …``
(``recommend(viewed, 10, exclude=shown, **filters)``, five viewed products, 30 shown ones:
no filter, ``pk__in`` 459 ids, ``pk__in`` every id (dev), the category), and with ``FUSION``
on (dev) ``fused similar`` and ``fused recommend``. Writes its catalog's key (``dev`` or
``synthetic``) of ``bench/results/hot-paths-1280.json``, keeping the other key.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import load_average, machine, postgres  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402

OUTPUT = RESULTS_DIR / "hot-paths-1280.json"
NOTES = {
    "dev": "6,573 products, one 1280-d EfficientNet-Lite0 image vector each, HNSW vector m=16"
    " (as the dev database has it), shared embedded Postgres (shared_buffers 128MB); similar,"
    " nearest, filtered and recommend with FUSION off (the image path); fused: FUSION on."
    " filtered: categories of about 1 in 200 of the catalog (exact scan). baseline recommend"
    " pk__in all fails on today's path (over 65,535 parameters).",
    "synthetic": "100k x 1280 synthetic clustered unit vectors (1M x 1280 does not build in"
    " time on 2 cores: 100k took 359-419 s), halfvec HNSW m=32 ef_construction=128, a private"
    " embedded server with shared_buffers 2GB (.cache/pgdata-hot); filter: a category of 1 in"
    " 200 (about 500 images, exact scan over the copy's B-tree).",
}
KEYS = {
    "similar_p50_ms": "similar",
    "recommend_p50_ms": "recommend",
    "filtered_p50_ms": "filtered",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", choices=("dev", "synthetic"), required=True)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=100_000, help="synthetic products")
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=128)
    parser.add_argument("--maintenance-work-mem", default="1GB")
    parser.add_argument("--parallel-workers", type=int, default=2)
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="keep rows and index loaded")
    parser.add_argument(
        "--ef-search", type=int, default=None, help="HNSW_EF_SEARCH (default: the setting's)"
    )
    parser.add_argument("--key", default=None, help="the result's key (default: --catalog)")
    parser.add_argument("--output", default=str(OUTPUT))
    return parser.parse_args()


def ef_search(args) -> dict:
    return {} if args.ef_search is None else {"HNSW_EF_SEARCH": args.ef_search}


def recommend_paths(pks: list, queries: int, seed: int, filters: dict) -> dict:
    """``recommend <name>`` paths: five viewed products and 30 shown ones per query."""
    from bench.query.hot import both
    from visualsearch.query.recommend import recommend

    rng = random.Random(seed)
    sessions = []
    for _ in range(queries):
        drawn = rng.sample(pks, 35)
        sessions.append((drawn[:5], drawn[5:]))
    paths = {}
    for name, options in filters.items():

        def call(i: int, options=options) -> list:
            viewed, shown = sessions[i]
            return recommend(viewed, 10, exclude=shown, **options)

        paths |= both(f"recommend{name}", call)
    return paths


def catalog_paths(pks, matrix, categories, queries: int, seed: int) -> tuple[dict, dict, dict]:
    """The similar, nearest and filtered paths, and the exact answers of the filtered one.

    ``matrix``: unit rows, one a product in ``pks`` order; ``categories``: each product's
    category id; the filter uses categories of about 1 in 200 of the catalog."""
    import numpy as np

    from bench.query.hot import both, exact_similar
    from visualsearch.query import nearest_products, similar_products

    rng = np.random.default_rng(seed)
    ids, counts = np.unique(categories, return_counts=True)
    share = len(pks) / 200
    wanted = ids[(counts >= share / 2) & (counts <= share * 2)]
    picked = rng.choice(len(pks), queries, replace=False)
    cats = rng.choice(wanted, queries)
    members = [np.flatnonzero(categories == c) for c in cats]
    # a product of the category: "more like this, in this category" (its own page)
    own = [int(pks[rng.choice(rows)]) for rows in members]
    truth = {
        "filtered": [exact_similar(matrix, pks, own[i], 8, members[i]) for i in range(queries)],
        "similar": [exact_similar(matrix, pks, int(pks[i]), 8) for i in picked],
    }
    paths = {
        **both("similar", lambda i: similar_products(int(pks[picked[i]]), 8)),
        **both("nearest", lambda i: nearest_products(matrix[picked[i]], 8)),
        **both("filtered", lambda i: similar_products(own[i], 8, category_id=int(cats[i]))),
    }
    info = {
        "filter_categories": len(wanted),
        "filter_images_median": int(np.median([len(m) for m in members])),
    }
    return paths, info, truth


def finish(args, name: str, results: dict, truth: list, info: dict, started: float) -> None:
    from bench.query.hot import recall, summary, table

    recalls = {  # recall@8 against exact search (the image vectors; not the fused ones)
        path: recall(results[path]["found"], truth[kind], 8)
        for path in results
        for kind in ("filtered", "similar")
        if path.endswith(kind) and "fused" not in path
    }
    print(table(results))
    print("recall@8:", recalls)
    report = summary(results, KEYS, recalls)
    if "fused similar" in results:
        report["fused"] = {
            "similar_p50_ms": results["fused similar"]["p50_ms"],
            "recommend_p50_ms": results["fused recommend"]["p50_ms"],
            "baseline": {
                "similar_p50_ms": results["baseline fused similar"]["p50_ms"],
                "recommend_p50_ms": results["baseline fused recommend"]["p50_ms"],
            },
        }
    for row in results.values():
        row.pop("found")
    report |= {
        "notes": NOTES[name] + (f" HNSW_EF_SEARCH {args.ef_search}." if args.ef_search else ""),
        **info,
        "paths": results,
        "recalls": recalls,
        "queries": args.queries,
        "hnsw_ef_search": settings_ef_search(),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_after": load_average(),
    }
    output = Path(args.output)
    existing = json.loads(output.read_text()) if output.exists() else {}
    existing[args.key or name] = report
    existing["machine"] = {**machine(), **postgres()}
    write_json(output, existing)


def settings_ef_search() -> int:
    from visualsearch.conf import visualsearch_settings

    return int(visualsearch_settings.HNSW_EF_SEARCH)


def run_dev(args) -> None:
    from bench.common.shop import setup_django

    setup_django()
    from django.conf import settings
    from django.test.utils import override_settings

    settings.DEBUG = False
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, **ef_search(args)}
    import numpy as np

    from bench.query.hot import both, measure
    from shop.catalog.models import Product
    from visualsearch.query import diversity, similar_products

    started = time.perf_counter()
    rows = dict(Product.objects.values_list("pk", "category_id"))
    vectors = diversity.product_vectors(sorted(rows))
    pks = np.array(sorted(vectors))
    matrix = np.stack([vectors[pk] for pk in pks])
    categories = np.array([rows[pk] for pk in pks])
    paths, info, truth = catalog_paths(pks, matrix, categories, args.queries, args.seed)
    everything = [int(pk) for pk in pks]
    subset = random.Random(args.seed).sample(everything, 459)
    category = {"category_id": int(np.bincount(categories).argmax())}
    filters = {"": {}, " pk__in 459": {"pk__in": subset}, " pk__in all": {"pk__in": everything}}
    filters[" category"] = category
    paths |= recommend_paths(everything, args.queries, args.seed, filters)
    image_path = {**settings.VISUALSEARCH, "FUSION": None}
    with override_settings(VISUALSEARCH=image_path):
        results = measure(paths, args.queries, args.seed)
    picked = random.Random(args.seed + 1).sample(everything, args.queries)
    fused = {
        **both("fused similar", lambda i: similar_products(picked[i], 8)),
        **recommend_paths(everything, args.queries, args.seed, {"": {}}),
    }
    fused = {name.replace("recommend", "fused recommend"): f for name, f in fused.items()}
    results |= measure(fused, args.queries, args.seed)
    info |= {"products": len(pks), "dimensions": int(matrix.shape[1])}
    info["fusion"] = settings.VISUALSEARCH["FUSION"]
    finish(args, "dev", results, truth, info, started)


def run_synthetic(args) -> None:
    from bench.query.database import load, setup_django, use_dimensions

    d = 1280
    setup_django(d)
    from django.conf import settings
    from django.core.management import call_command

    settings.DEBUG = False
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        **ef_search(args),
        "FUSION": None,
        "HNSW_HALFVEC": True,
        "HNSW_M": args.m,
        "HNSW_EF_CONSTRUCTION": args.ef_construction,
    }
    call_command("migrate", verbosity=0)
    use_dimensions(d)
    import numpy as np

    from bench.query import indexes
    from bench.query.hot import measure

    started = time.perf_counter()
    vectors, categories = load(args.n, d, args, "plain")
    build = indexes.build_index("halfvec", d, args)
    pks = np.arange(1, args.n + 1)
    paths, info, truth = catalog_paths(pks, vectors, categories, args.queries, args.seed)
    everything = [int(pk) for pk in pks]
    subset = random.Random(args.seed).sample(everything, 459)
    filters = {"": {}, " pk__in 459": {"pk__in": subset}}
    filters[" category"] = {"category_id": int(categories[0])}
    paths |= recommend_paths(everything, args.queries, args.seed, filters)
    results = measure(paths, args.queries, args.seed)
    info |= {"products": args.n, "dimensions": d, "build": build, "index": "halfvec m=32"}
    finish(args, "synthetic", results, truth, info, started)


def main() -> None:
    args = parse_args()
    (run_dev if args.catalog == "dev" else run_synthetic)(args)


if __name__ == "__main__":
    main()
