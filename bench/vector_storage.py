"""Filtered exact scans with the vectors in the rows (PLAIN) or in the TOAST table (EXTERNAL).

    .venv/bin/python bench/query_bench.py --configs 1000000x512 --indexes vector   # load
    .venv/bin/python bench/vector_storage.py

Runs on the rows ``bench/query_bench.py`` left in ``catalog_productimage`` (the app's table,
stored as its migration says: PLAIN). Copies them, in the same order, into ``img_toast``
stored EXTERNAL (pgvector's default), then times the raw exact scan over the rows of one
category (1 of 200; B-tree on the category, ``+ 0`` hides the ordering from the HNSW index)
on both tables, and on the PLAIN table ordered by the halfvec expression, interleaved query by
query. Writes ``bench/results/vector-storage-<n>.json``; drops the copy with ``--drop``.
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

from bench.common.machine import machine, memory_gb, postgres  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.stats import median, percentile  # noqa: E402
from bench.query.database import raw_connection, setup_django  # noqa: E402


def exact_sql(table: str, distance: str) -> str:
    return (
        f"SELECT i.product_id, {distance} FROM {table} i"
        " JOIN catalog_product p ON p.id = i.product_id"
        " WHERE i.embedding_status = 'ready' AND i.embedding_model = %(model)s"
        f" AND i.product_id <> %(me)s AND p.category_id = %(c)s ORDER BY ({distance}) + 0"
        " LIMIT 10"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--drop", action="store_true", help="drop the EXTERNAL copy afterwards")
    args = parser.parse_args()
    setup_django(512)
    conn = raw_connection()
    n, d = conn.execute(
        "SELECT count(*), max(vector_dims(embedding)) FROM catalog_productimage"
    ).fetchone()
    copied = conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'img_toast'").fetchone()
    if not copied[0] or conn.execute("SELECT count(*) FROM img_toast").fetchone()[0] != n:
        started = time.perf_counter()
        conn.execute("DROP TABLE IF EXISTS img_toast")
        conn.execute("CREATE TABLE img_toast (LIKE catalog_productimage INCLUDING DEFAULTS)")
        conn.execute("ALTER TABLE img_toast ALTER COLUMN embedding SET STORAGE EXTERNAL")
        conn.execute("INSERT INTO img_toast SELECT * FROM catalog_productimage ORDER BY id")
        conn.execute("CREATE INDEX ON img_toast (product_id)")
        conn.execute("VACUUM ANALYZE img_toast")
        print(f"copied {n} rows in {time.perf_counter() - started:.0f} s", flush=True)
    rng = np.random.default_rng(args.seed)
    ids = [int(i) for i in rng.integers(1, n + 1, args.queries)]
    cats = [int(c) for c in rng.integers(1, args.categories + 1, args.queries)]
    model = conn.execute("SELECT embedding_model FROM catalog_productimage LIMIT 1").fetchone()[0]
    vectors = {
        i: conn.execute(
            "SELECT embedding FROM catalog_productimage WHERE product_id = %s", [i]
        ).fetchone()[0]
        for i in ids
    }
    vector = "i.embedding <=> %(q)s"
    half = f"i.embedding::halfvec({d}) <=> %(q)s::halfvec({d})"
    cases = {
        "external (TOAST)": exact_sql("img_toast", vector),
        "plain": exact_sql("catalog_productimage", vector),
        "plain, halfvec expression": exact_sql("catalog_productimage", half),
    }
    sizes = {
        name: conn.execute(
            "SELECT pg_relation_size(%s::regclass), pg_table_size(%s::regclass)", [table, table]
        ).fetchone()
        for name, table in (("external", "img_toast"), ("plain", "catalog_productimage"))
    }
    for i, c in zip(ids[:10], cats[:10], strict=True):  # warm-up
        for sql in cases.values():
            conn.execute(sql, {"q": vectors[i], "me": i, "c": c, "model": model}).fetchall()
    lat: dict[str, list[float]] = {name: [] for name in cases}
    found: dict[str, list[list[int]]] = {name: [] for name in cases}
    for i, c in zip(ids, cats, strict=True):
        for name, sql in cases.items():
            started = time.perf_counter()
            rows = conn.execute(sql, {"q": vectors[i], "me": i, "c": c, "model": model}).fetchall()
            lat[name].append((time.perf_counter() - started) * 1000)
            found[name].append([pid for pid, _ in rows])
    base = lat["external (TOAST)"]
    results = []
    for name in cases:
        same = np.mean(
            [
                len(set(a) & set(b)) / max(len(b), 1)
                for a, b in zip(found[name], found["plain"], strict=True)
            ]
        )
        results.append(
            {
                "case": name,
                "p50_ms": round(median(lat[name]), 2),
                "p95_ms": round(percentile(lat[name], 0.95), 2),
                "ratio_to_external": round(
                    median(a / b for a, b in zip(lat[name], base, strict=True)), 2
                ),
                "same_rows_as_plain": round(float(same), 3),
            }
        )
        print("  " + "  ".join(f"{k}={v}" for k, v in results[-1].items()), flush=True)
    if args.drop:
        conn.execute("DROP TABLE img_toast")
    report = {
        "machine": {**machine(), "memory_gb": memory_gb(), **postgres()},
        "n": n,
        "d": d,
        "queries": args.queries,
        "heap_and_toast_mb": {
            name: {"heap": round(heap / 2**20), "with_toast": round(total / 2**20)}
            for name, (heap, total) in sizes.items()
        },
        "results": results,
    }
    write_json(RESULTS_DIR / f"vector-storage-{n}.json", report)


if __name__ == "__main__":
    main()
