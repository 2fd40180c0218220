"""Query path at catalog scale: the app's similarity queries against raw pgvector SQL.

    .venv/bin/python bench/query_bench.py                      # 100k x 512-d and 100k x 1280-d
    .venv/bin/python bench/query_bench.py --configs 1000000x512 --indexes vector,halfvec

For every configuration ``N x d``:

1. **load** (:mod:`bench.query.database`): synthetic clustered unit vectors (``--centres``
   Gaussian centres, cosine of a point to its own centre ≈ 0.85, fixed seed) into the app's
   real tables (``catalog_product`` + ``catalog_productimage``, one ready image per product,
   products in ``--categories`` categories drawn uniformly) with binary ``COPY`` and
   pgvector's binary dumper. The vector column is resized with ``manage.py
   visualsearch_reindex --resize`` (the app's own tool; the table is empty then) under a
   synthetic encoder of ``d`` dimensions, whose ``model_id`` the rows carry, so ``ready()``
   matches them as it would real vectors. The column's storage is ``--storage`` (``plain``,
   what the demo's migration sets with ``visualsearch.storage.operations.EmbeddingStorage``;
   ``external``, pgvector's default, keeps 512-d and larger vectors in the TOAST table); a
   comma list loads and measures each in turn.
2. **build** (:mod:`bench.query.indexes`): the app's index ``productimage_hnsw``
   (``vector_cosine_ops``, or the halfvec expression index ``(embedding::halfvec(d))
   halfvec_cosine_ops`` that ``HNSW_HALFVEC`` makes) with ``--m`` / ``--ef-construction``;
   build time and size.
3. **unfiltered** (:mod:`bench.query.measure`, paths in :mod:`bench.query.paths`):
   ``--queries`` products as queries (their own vector, themselves excluded), for each
   ef_search: raw SQL (one statement, binary vector parameter, ``hnsw.ef_search`` set once
   per session), the app's ``nearest_products`` (vector given) and ``similar_products``
   (product given: the mean of its vectors is a subquery of the k-NN statement; loads product
   instances) and raw SQL doing the same work as each (``raw_nearest``, ``raw_similar``: the
   same statements, transaction and ``SET LOCAL`` through psycopg, and the products) in the
   same run, interleaved query by query: one untimed round of every path, then each path
   timed in a shuffled order. p50/p95 latency, recall@10 against exact search (numpy brute
   force), QPS with 2 client processes.
4. **filtered** (``category = c``, 1 of 200): raw post-filtering (no iterative scan), raw
   iterative scan (relaxed order), raw exact scans over the filtered rows (ranked by
   ``1 + (embedding <#> q)`` as the app ranks them: the cosine distance of unit vectors, which
   the cosine HNSW index cannot serve) through the product's category (a join, B-tree on the
   product table) and through the image row's copy of it (``IMAGE_FILTER_FIELDS``, B-tree on
   the image table), and the app's ``similar_products(category_id=c)`` with its strategy
   choice, through the copy and through the join. ``--covering`` then builds the copy's
   covering index (``visualsearch.models.filter_scan_index``: the vectors in a B-tree on the
   category) and measures the exact scans over the copy again. ``--cluster`` then rewrites
   the image table in category order (``CLUSTER``, which rebuilds the HNSW index too) and
   measures the exact scans over the copy again.

Uses the database ``vs_bench_query`` (``VISUALSEARCH_DB_NAME``) on the embedded Postgres,
created and migrated here; every run empties its catalog tables. The published numbers ran on
a private embedded server (``VISUALSEARCH_PGDATA=.cache/pgdata-bench``, ``ALTER SYSTEM SET
shared_buffers = '4GB'``): with the default 128MB, the 1M index is read from the page cache.
On a small catalog a high ``hnsw.ef_search`` makes the planner prefer an exact scan (100k rows:
from 400 at 512-d, and already at 100 for the raw ``LIMIT 10`` at 1280-d), so keep
``--ef-search`` to 40,100,200 at 100k. Prints tables and writes
``bench/results/query-<configs>.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import machine, memory_gb, postgres  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.tables import dict_table  # noqa: E402

EF_SEARCH = (40, 100, 200, 400, 800)
#: The printed tables' columns.
BUILD_COLUMNS = "n d storage index m ef_construction build_s index_mb table_mb".split()
UNFILTERED_COLUMNS = (
    "n d storage index ef_search path p50_ms p95_ms recall qps_2clients ratio_to_raw".split()
)
FILTERED_COLUMNS = (
    "n d storage index case estimated_rows p50_ms p95_ms cold_p50_ms recall rows".split()
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="100000x512,100000x1280", help="N x d, comma list")
    parser.add_argument("--indexes", default="vector,halfvec", help="vector and/or halfvec")
    parser.add_argument(
        "--storage",
        default="plain",
        help="the vector column's storage, comma list: plain (the app's migration), main,"
        " external (pgvector's default: 512-d and larger vectors go to TOAST)",
    )
    parser.add_argument("--ef-search", default=",".join(map(str, EF_SEARCH)))
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--maintenance-work-mem", default="6GB")
    parser.add_argument("--parallel-workers", type=int, default=2)
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--filtered-queries", type=int, default=100)
    parser.add_argument("--qps-seconds", type=float, default=3.0, help="0: skip QPS")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None)
    parser.add_argument("--parts", default="unfiltered,filtered", help="what to measure")
    parser.add_argument(
        "--partial-indexes",
        type=int,
        default=0,
        metavar="MIN_ROWS",
        help="then build a partial HNSW index per category of at least MIN_ROWS images"
        " (visualsearch_filter_indexes) and measure filtered again",
    )
    parser.add_argument(
        "--covering",
        action="store_true",
        help="then build the category copy's covering index (filter_scan_index) and measure"
        " filtered again",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="then CLUSTER the image table by the category copy and measure filtered again",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep rows a previous run loaded (same N, d, seed) and its index (same definition)",
    )
    args = parser.parse_args()
    args.ef_search = [int(x) for x in args.ef_search.split(",")]
    return args


def main() -> None:
    args = parse_args()
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    from bench.query import indexes
    from bench.query.database import load, setup_django, use_dimensions
    from bench.query.measure import filtered, unfiltered

    setup_django(configs[0][1])
    from django.conf import settings

    settings.DEBUG = False  # no query log: it formats every vector into the SQL it keeps
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results = {
        "machine": {**machine(), "memory_gb": memory_gb(), **postgres()},
        "args": vars(args),
        "builds": [],
        "unfiltered": [],
        "filtered": [],
    }
    output = Path(args.output or RESULTS_DIR / f"query-{args.configs}.json")
    for n, d in configs:
        override = use_dimensions(d)
        for storage in args.storage.split(","):
            vectors, categories = load(n, d, args, storage)

            def add(part: str, rows: list[dict], storage: str = storage) -> None:
                results[part] += [{"storage": storage, **row} for row in rows]
                write_json(output, results, announce=False)  # what is measured so far

            for kind in args.indexes.split(","):
                build = indexes.build_index(kind, d, args)
                results["builds"].append({"n": n, "d": d, "storage": storage, **build})
                for part, measure in (("unfiltered", unfiltered), ("filtered", filtered)):
                    if part in args.parts.split(","):  # "filtered" is in "unfiltered"
                        add(part, measure(kind, n, d, vectors, categories, args))
                if args.covering:
                    results["builds"][-1].update(indexes.build_covering_index(args))
                    add("filtered", filtered(kind, n, d, vectors, categories, args, covering=True))
                if args.cluster:
                    results["builds"][-1]["cluster_s"] = round(indexes.cluster_by_category(args), 1)
                    add("filtered", filtered(kind, n, d, vectors, categories, args, clustered=True))
                if args.partial_indexes:
                    results["builds"][-1].update(indexes.build_partial_indexes(kind, args))
                    add("filtered", filtered(kind, n, d, vectors, categories, args, partial=True))
            del vectors
        override.disable()
    print(dict_table("Index builds", results["builds"], BUILD_COLUMNS))
    print(
        dict_table(
            "Unfiltered top-10 (ms; ratio: median per query, app / raw doing the same work)",
            results["unfiltered"],
            UNFILTERED_COLUMNS,
        )
    )
    print(
        dict_table(
            "Filtered top-10, category = 1 of 200",
            results["filtered"],
            FILTERED_COLUMNS,
        )
    )
    write_json(output, results)


if __name__ == "__main__":
    main()
