"""Query path at catalog scale: the app's similarity queries against raw pgvector SQL.

    .venv/bin/python bench/query_bench.py                      # 100k x 512-d and 100k x 1280-d
    .venv/bin/python bench/query_bench.py --configs 1000000x512 --indexes vector,halfvec

For every configuration ``N x d``:

1. **load**: synthetic clustered unit vectors (``--centres`` Gaussian centres, cosine of a
   point to its own centre ≈ 0.85, fixed seed) into the app's real tables
   (``catalog_product`` + ``catalog_productimage``, one ready image per product, products in
   ``--categories`` categories drawn uniformly) with binary ``COPY`` and pgvector's binary
   dumper. The vector column is resized with ``manage.py visualsearch_reindex --resize`` (the
   app's own tool; the table is empty then) under a synthetic encoder of ``d`` dimensions,
   whose ``model_id`` the rows carry, so ``ready()`` matches them as it would real vectors.
   The column's storage is ``--storage`` (``plain``, what the demo's migration sets with
   ``visualsearch.operations.EmbeddingStorage``; ``external``, pgvector's default, keeps 512-d
   and larger vectors in the TOAST table); a comma list loads and measures each in turn.
2. **build**: the app's index ``productimage_hnsw`` (``vector_cosine_ops``, or the halfvec
   expression index ``(embedding::halfvec(d)) halfvec_cosine_ops`` that ``HNSW_HALFVEC``
   makes) with ``--m`` / ``--ef-construction``; build time and size.
3. **unfiltered**: ``--queries`` products as queries (their own vector, themselves
   excluded), for each ef_search: raw SQL (one statement, binary vector parameter,
   ``hnsw.ef_search`` set once per session), the app's ``nearest_products`` (vector given) and
   ``similar_products`` (product given: the mean of its vectors is a subquery of the k-NN
   statement; loads product instances) and raw SQL doing the same work as each
   (``raw_nearest``, ``raw_similar``: the same statements, transaction and ``SET LOCAL``
   through psycopg, and the products) in the same run, interleaved query by query: one
   untimed round of every path, then each path timed in a shuffled order. p50/p95
   latency, recall@10 against exact search (numpy brute force), QPS with 2 client
   processes.
4. **filtered** (``category = c``, 1 of 200): raw post-filtering (no iterative scan), raw
   iterative scan (relaxed order), raw exact scans over the filtered rows (ranked by
   ``1 + (embedding <#> q)`` as the app ranks them: the cosine distance of unit vectors, which
   the cosine HNSW index cannot serve) through the product's category (a join, B-tree on the
   product table) and through the image row's copy of it (``IMAGE_FILTER_FIELDS``, B-tree on
   the image table), and the app's ``similar_products(category_id=c)`` with its strategy
   choice, through the copy and through the join. ``--covering`` then builds the copy's
   covering index (``visualsearch.models.filter_scan_index``: the vectors in a B-tree on the
   category) and measures the exact scans over the copy again. ``--cluster`` then rewrites the image
   table in category order (``CLUSTER``, which rebuilds the HNSW index too) and measures
   the exact scans over the copy again.

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
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
os.environ.setdefault("VISUALSEARCH_DB_NAME", "vs_bench_query")

from visualsearch.encoders.base import BaseEncoder  # noqa: E402

MODEL_ID = "bench:synthetic-{dimensions}"
EF_SEARCH = (40, 100, 200, 400, 800)


class SyntheticEncoder(BaseEncoder):
    """Stands in for the real encoder: only its size and ``model_id`` matter to queries."""

    def __init__(self, dimensions: int = 512) -> None:
        self.dimensions = dimensions

    @property
    def model_id(self) -> str:
        return MODEL_ID.format(dimensions=self.dimensions)


# --- data ---------------------------------------------------------------------------------


def clustered_vectors(n: int, d: int, centres: int, seed: int, chunk: int = 100_000):
    """Yield ``(start, unit vectors)`` chunks: Gaussian clusters, cosine to centre ≈ 0.85."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sigma = np.sqrt(1 / 0.85**2 - 1)  # |c| = 1, |noise| ≈ sigma: cos = 1 / sqrt(1 + sigma²)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        owner = rng.integers(0, centres, size)
        noise = rng.standard_normal((size, d)).astype(np.float32) * (sigma / np.sqrt(d))
        x = c[owner] + noise
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield start, x


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, exclude=None, rows=None):
    """Ids (row indices) of the exact ``k`` nearest by cosine, optionally among ``rows``."""
    out = []
    for i, q in enumerate(queries):
        pool = vectors if rows is None else vectors[rows[i]]
        sims = pool @ q
        if exclude is not None:
            own = exclude[i] if rows is None else np.flatnonzero(rows[i] == exclude[i])
            sims[own] = -np.inf
        top = np.argpartition(-sims, min(k, len(sims) - 1))[:k]
        top = top[np.argsort(-sims[top])]
        out.append(top if rows is None else rows[i][top])
    return out


# --- database -----------------------------------------------------------------------------


def setup_django(dimensions: int) -> None:
    import django
    from django.conf import settings

    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "bench.query_bench.SyntheticEncoder",
        "ENCODER_OPTIONS": {"dimensions": dimensions},
    }
    django.setup()


def use_dimensions(dimensions: int):
    """Point the synthetic encoder (and the model field) at ``dimensions``."""
    from django.conf import settings
    from django.test.utils import override_settings

    from shop.catalog.models import ProductImage

    override = override_settings(
        VISUALSEARCH={**settings.VISUALSEARCH, "ENCODER_OPTIONS": {"dimensions": dimensions}}
    )
    override.enable()
    ProductImage._meta.get_field("embedding").dimensions = dimensions
    return override


def raw_connection():
    """A psycopg connection of its own (autocommit) to Django's database, pgvector registered."""
    import psycopg
    from django.db import connection
    from pgvector.psycopg import register_vector

    connection.ensure_connection()
    conn = psycopg.connect(connection.connection.info.dsn, autocommit=True)
    register_vector(conn)
    return conn


def load(n: int, d: int, args, storage: str = "plain") -> tuple[np.ndarray, np.ndarray]:
    """Empty the catalog tables, resize the column, set its ``storage``, COPY ``n`` products
    + images in."""
    from django.core.management import call_command
    from django.db import connection
    from pgvector import Vector

    from shop.catalog.models import Category, ProductImage

    with connection.cursor() as cursor:  # measured on its own, after the plain index (--covering)
        cursor.execute("DROP INDEX IF EXISTS productimage_category_scan")
    if args.reuse and ProductImage.objects.ready().count() == n and column_storage() == storage:
        # Same seed, same rows: regenerate the vectors for exact search, skip the COPY.
        vectors = np.concatenate([x for _, x in clustered_vectors(n, d, args.centres, args.seed)])
        categories = np.random.default_rng(args.seed + 1).integers(1, args.categories + 1, n)
        print(f"reusing the {n} x {d} rows already loaded", flush=True)
        return vectors, categories
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS productimage_hnsw")
        cursor.execute("TRUNCATE catalog_productimage, catalog_product, catalog_category CASCADE")
        # The rows go in in load order: forget an earlier run's CLUSTER
        cursor.execute("ALTER TABLE catalog_productimage SET WITHOUT CLUSTER")
    call_command("visualsearch_reindex", "--resize", "--no-progress", stdout=open(os.devnull, "w"))
    with connection.cursor() as cursor:  # the app's migration makes it PLAIN
        cursor.execute(
            f"ALTER TABLE catalog_productimage ALTER COLUMN embedding SET STORAGE {storage}"
        )
    Category.objects.bulk_create(
        [Category(id=i + 1, name=f"Category {i}", slug=f"c{i}") for i in range(args.categories)]
    )
    categories = np.random.default_rng(args.seed + 1).integers(1, args.categories + 1, n)
    vectors = np.empty((n, d), dtype=np.float32)
    conn = raw_connection()
    model_id = MODEL_ID.format(dimensions=d)
    started = time.perf_counter()
    with conn.cursor() as cur:
        with cur.copy(
            "COPY catalog_product (id, name, slug, description, category_id, price, in_stock,"
            " created_at) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(
                ["int8", "text", "text", "text", "int8", "numeric", "bool", "timestamptz"]
            )
            now, price = _now(), Decimal("10.00")
            for i in range(n):
                copy.write_row(
                    (i + 1, f"Product {i}", f"p{i}", "", int(categories[i]), price, True, now)
                )
        with cur.copy(
            "COPY catalog_productimage (id, product_id, image, position, alt_text, source,"
            " embedding, embedding_model, embedding_hash, embedding_status, embedding_error,"
            " embedded_at, embedding_updated_at, category_id) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(
                [
                    "int8",
                    "int8",
                    "text",
                    "int4",
                    "text",
                    "text",
                    "vector",
                    "text",
                    "text",
                    "text",
                    "text",
                    "timestamptz",
                    "timestamptz",
                    "int8",
                ]
            )
            for start, chunk in clustered_vectors(n, d, args.centres, args.seed):
                vectors[start : start + len(chunk)] = chunk
                for j, v in enumerate(chunk):
                    i = start + j
                    copy.write_row(
                        (
                            i + 1,
                            i + 1,
                            f"bench/{i}.jpg",
                            0,
                            "",
                            "",
                            Vector(v),
                            model_id,
                            "",
                            "ready",
                            "",
                            now,
                            now,
                            int(categories[i]),  # the copy IMAGE_FILTER_FIELDS keeps
                        )
                    )
    conn.close()
    for table in ("catalog_product", "catalog_productimage"):
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM ANALYZE {table}")
    print(f"loaded {n} x {d} in {time.perf_counter() - started:.1f} s", flush=True)
    return vectors, categories


def column_storage() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attstorage FROM pg_attribute WHERE attname = 'embedding'"
            " AND attrelid = 'catalog_productimage'::regclass"
        )
        code = cursor.fetchone()[0]
    return {"p": "plain", "m": "main", "e": "external", "x": "extended"}[code]


def _now():
    from django.utils import timezone

    return timezone.now()


def maintenance_settings(cursor, args) -> None:
    """The session's memory and parallel workers for index builds and CLUSTER."""
    cursor.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
    cursor.execute(f"SET max_parallel_maintenance_workers = {args.parallel_workers}")


def build_index(kind: str, d: int, args) -> dict:
    from django.db import connection

    column = "embedding vector_cosine_ops"
    if kind == "halfvec":
        column = f"(embedding::halfvec({d})) halfvec_cosine_ops"
    definition = (
        f"CREATE INDEX productimage_hnsw ON catalog_productimage USING hnsw ({column})"
        f" WITH (m = {args.m}, ef_construction = {args.ef_construction})"
    )
    with connection.cursor() as cursor:
        seconds = None
        if args.reuse:  # the same index from an earlier run (its build time is in that run)
            cursor.execute("SELECT obj_description(to_regclass('productimage_hnsw'), 'pg_class')")
            found = cursor.fetchone()
            if found and found[0] and found[0].startswith(definition + ";"):
                seconds = float(found[0].rsplit(";", 1)[1])
                print(f"reusing the {kind} index (built in {seconds:.1f} s)", flush=True)
    if seconds is None:
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX IF EXISTS productimage_hnsw")
            maintenance_settings(cursor, args)
            started = time.perf_counter()
            cursor.execute(definition)
            seconds = time.perf_counter() - started
            cursor.execute(f"COMMENT ON INDEX productimage_hnsw IS '{definition};{seconds:.1f}'")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size('productimage_hnsw')")
        size = cursor.fetchone()[0]
        cursor.execute("SELECT pg_total_relation_size('catalog_productimage')")
        table = cursor.fetchone()[0]
        cursor.execute("VACUUM ANALYZE catalog_productimage")
    row = {
        "index": kind,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_s": round(seconds, 1),
        "index_mb": round(size / 2**20, 1),
        "table_mb": round(table / 2**20, 1),
    }
    print(
        f"built {kind} index (m={args.m}, ef_construction={args.ef_construction}) in "
        f"{seconds:.1f} s, {size / 2**20:.0f} MB",
        flush=True,
    )
    return row


# --- query paths --------------------------------------------------------------------------


def raw_sql(
    kind: str, d: int, filtered: bool = False, exact: bool = False, mean=False, copy=False
) -> str:
    """The k-NN statement; with ``mean`` the query vector is the mean of product ``me``'s
    vectors (a subquery, as ``similar_products`` sends it), else the parameter ``q``.
    ``filtered`` keeps category ``c``: through the product (a join), or with ``copy`` through
    the image row's copy of it (``IMAGE_FILTER_FIELDS``)."""
    column, query = "embedding", "%(q)s"
    ready = "{0}.embedding_status = 'ready' AND {0}.embedding_model = %(model)s"
    if mean:
        query = (
            "(SELECT l2_normalize(AVG(m.embedding)) FROM catalog_productimage m"
            f" WHERE m.product_id = %(me)s AND {ready.format('m')} GROUP BY m.product_id)"
        )
    if kind == "halfvec" and not exact:  # an exact scan compares the full vectors (as the app)
        column, query = f"embedding::halfvec({d})", f"{query}::halfvec({d})"
    # An exact scan ranks as the app does: 1 + inner product, the cosine distance of unit
    # vectors, which the cosine HNSW index cannot serve.
    distance = f"1 + ({column} <#> {query})" if exact else f"{column} <=> {query}"
    order = distance
    join = " JOIN catalog_product p ON p.id = i.product_id" if filtered and not copy else ""
    where = f" AND {'i' if copy else 'p'}.category_id = %(c)s" if filtered else ""
    if mean:
        where += f" AND {query} IS NOT NULL"
    return (
        f"SELECT i.product_id, {distance} FROM catalog_productimage i{join}"
        f" WHERE {ready.format('i')} AND i.product_id <> %(me)s{where}"
        f" ORDER BY {order} LIMIT %(k)s"
    )


class Raw:
    """Raw pgvector SQL on the Django connection's psycopg connection (autocommit)."""

    def __init__(self, kind: str, d: int):
        self.conn = raw_connection()
        self.kind, self.d = kind, d
        self.model = MODEL_ID.format(dimensions=d)

    def configure(self, ef_search: int, iterative: str = "off", sort: bool = True) -> None:
        self.conn.execute(f"SET hnsw.ef_search = {ef_search}")
        self.conn.execute(f"SET hnsw.iterative_scan = {iterative}")
        self.conn.execute(f"SET enable_sort = {'on' if sort else 'off'}")  # off: partial index

    def query(self, vector, me, k=10, category=None, exact=False, copy=False) -> list[int]:
        from pgvector import HalfVector, Vector

        q = HalfVector(vector) if self.kind == "halfvec" and not exact else Vector(vector)
        filtered = category is not None
        sql = raw_sql(self.kind, self.d, filtered=filtered, exact=exact, copy=copy)
        params = {"q": q, "model": self.model, "me": me, "k": k, "c": category}
        rows = self.conn.execute(sql, params, prepare=False).fetchall()
        return [pid for pid, _ in rows]

    def similar(self, me, ef_search, k=10) -> list[int]:
        """What ``similar_products`` does, in raw SQL: in a transaction with ``SET LOCAL``, the
        k-NN statement whose query vector is the mean of the product's vectors (a subquery;
        overfetch x4, best image per product), then load the products."""
        params = {"model": self.model, "me": me, "k": 4 * k, "c": None}
        with self.conn.transaction():
            self.conn.execute(
                f"SET LOCAL hnsw.ef_search = {max(ef_search, 4 * k)};"
                " SET LOCAL hnsw.iterative_scan = relaxed_order"
            )
            rows = self.conn.execute(raw_sql(self.kind, self.d, mean=True), params).fetchall()
        ids = list(dict.fromkeys(pid for pid, _ in rows))[:k]
        self.conn.execute("SELECT * FROM catalog_product WHERE id = ANY(%s)", [ids]).fetchall()
        return ids

    def nearest(self, vector, me, ef_search, k=10) -> list[int]:
        """What ``nearest_products`` does, in raw SQL: the k-NN statement with the query
        vector as a parameter, in a transaction with ``SET LOCAL``, then load the products."""
        from pgvector import HalfVector, Vector

        q = HalfVector(vector) if self.kind == "halfvec" else Vector(vector)
        params = {"q": q, "model": self.model, "me": me, "k": 4 * k, "c": None}
        with self.conn.transaction():
            self.conn.execute(
                f"SET LOCAL hnsw.ef_search = {max(ef_search, 4 * k)};"
                " SET LOCAL hnsw.iterative_scan = relaxed_order"
            )
            rows = self.conn.execute(raw_sql(self.kind, self.d), params).fetchall()
        ids = list(dict.fromkeys(pid for pid, _ in rows))[:k]
        self.conn.execute("SELECT * FROM catalog_product WHERE id = ANY(%s)", [ids]).fetchall()
        return ids


def app_nearest(vector, me, k=10, **filters) -> list[int]:
    from visualsearch.query import nearest_products

    return [p.pk for p in nearest_products(vector, k, exclude=me, **filters)]


def app_similar(me, k=10, **filters) -> list[int]:
    from shop.catalog.models import Product
    from visualsearch.query import similar_products

    return [p.pk for p in similar_products(Product(pk=me), k, **filters)]


def app_settings(**values):
    from django.conf import settings
    from django.test.utils import override_settings

    return override_settings(VISUALSEARCH={**settings.VISUALSEARCH, **values})


def timed(fn, *a, **kw):
    started = time.perf_counter()
    result = fn(*a, **kw)
    return (time.perf_counter() - started) * 1000, result


def recall(found: list[int], truth) -> float:
    wanted = {int(i) + 1 for i in truth}  # row index -> product id
    return len(wanted & set(found)) / len(wanted)


def summarise(latencies: list[float], recalls: list[float], counts: list[int]) -> dict:
    ordered = sorted(latencies)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
        "recall": round(float(np.mean(recalls)), 4),
        "rows": round(float(np.mean(counts)), 2),
    }


# --- QPS with 2 client processes ----------------------------------------------------------


def _qps_worker(path, kind, d, ef, ids, vectors, seconds, start_at, halfvec, queue):
    from django.db import connections

    connections.close_all()
    count = 0
    with app_settings(HNSW_EF_SEARCH=ef, HNSW_HALFVEC=halfvec):
        raw = Raw(kind, d) if path.startswith("raw") else None
        if raw:
            raw.configure(ef)
        while time.time() < start_at:
            time.sleep(0.001)
        stop = start_at + seconds
        while time.time() < stop:
            i = count % len(ids)
            if path == "raw":
                raw.query(vectors[i], int(ids[i]))
            elif path == "raw_similar":
                raw.similar(int(ids[i]), ef)
            elif path == "raw_nearest":
                raw.nearest(vectors[i], int(ids[i]), ef)
            elif path == "nearest":
                app_nearest(vectors[i], int(ids[i]))
            else:
                app_similar(int(ids[i]))
            count += 1
    queue.put(count)


def qps(path, kind, d, ef, ids, vectors, seconds, clients=2) -> float:
    from django.db import connections

    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 1.0
    procs = [
        ctx.Process(
            target=_qps_worker,
            args=(path, kind, d, ef, ids, vectors, seconds, start_at, kind == "halfvec", queue),
        )
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return round(total / seconds, 1)


# --- measurements -------------------------------------------------------------------------


def unfiltered(kind, n, d, vectors, categories, args) -> list[dict]:
    rng = np.random.default_rng(args.seed + 2)
    idx = rng.choice(n, args.queries, replace=False)
    truth = exact_top(vectors, vectors[idx], 10, exclude=idx)
    ids = idx + 1
    rows = []
    raw = Raw(kind, d)
    for ef in args.ef_search:
        raw.configure(ef)
        lat = {"raw": [], "raw_nearest": [], "nearest": [], "raw_similar": [], "similar": []}
        rec = {key: [] for key in lat}
        cnt = {key: [] for key in lat}
        with app_settings(HNSW_EF_SEARCH=ef, HNSW_HALFVEC=kind == "halfvec"):
            for i in range(min(20, len(idx))):  # warm-up
                raw.query(vectors[idx[i]], int(ids[i]))
                app_similar(int(ids[i]))
            order = list(lat)
            for i, row in enumerate(idx):

                def run(path, i=i, row=row, ef=ef):
                    if path == "raw":
                        return timed(raw.query, vectors[row], int(ids[i]))
                    if path == "raw_similar":
                        return timed(raw.similar, int(ids[i]), ef)
                    if path == "raw_nearest":
                        return timed(raw.nearest, vectors[row], int(ids[i]), ef)
                    if path == "nearest":
                        return timed(app_nearest, vectors[row], int(ids[i]))
                    return timed(app_similar, int(ids[i]))

                # Whichever path runs first on a query reads its part of the graph into
                # memory for the others (a fixed order favoured the later paths, a shuffled
                # one whichever came second): one untimed round first, then every path
                # timed on warm pages, in a shuffled order.
                for path in order:
                    run(path)
                rng.shuffle(order)
                for path in order:
                    ms, found = run(path)
                    lat[path].append(ms)
                    rec[path].append(recall(found, truth[i]))
                    cnt[path].append(len(found))
        stats = {path: summarise(lat[path], rec[path], cnt[path]) for path in lat}
        for path in lat:
            if args.qps_seconds > 0:
                stats[path]["qps_2clients"] = qps(
                    path, kind, d, ef, ids[:50], vectors[idx[:50]], args.qps_seconds
                )
            # Per-query ratios, then the median: the paths ran back to back, query by query.
            # The app's paths against raw SQL doing the same work (raw_similar, raw_nearest),
            # those against the bare raw statement.
            base = lat[{"similar": "raw_similar", "nearest": "raw_nearest"}.get(path, "raw")]
            stats[path]["ratio_to_raw"] = round(
                statistics.median(a / b for a, b in zip(lat[path], base, strict=True)), 2
            )
            rows.append(
                {"n": n, "d": d, "index": kind, "ef_search": ef, "path": path, **stats[path]}
            )
        _print_rows(rows[-len(lat) :])
    return rows


def filtered(
    kind, n, d, vectors, categories, args, clustered=False, partial=False, covering=False
) -> list[dict]:
    """Category filter (1 of ``--categories``): the raw strategies and the app's choice.

    The app answers the filter from the image row's copy of the category (the demo's
    ``IMAGE_FILTER_FIELDS``) or, with that setting emptied, through the product (a join).
    ``clustered``: after ``CLUSTER`` by the copy's index, only the cases that read it;
    ``covering``: with the copy's covering index (``filter_scan_index``), likewise.

    Every case runs its queries twice: the first pass reads what is not yet in memory (its
    p50 is ``cold_p50_ms``), the second is the one reported.
    """
    from visualsearch.conf import visualsearch_settings

    clustered = clustered or category_index()[1]  # a table clustered by an earlier run
    # hnsw.ef_search the app sets: for a partial index its own setting, else HNSW_EF_SEARCH
    setting = "FILTER_INDEX_EF_SEARCH" if partial else "HNSW_EF_SEARCH"
    app_ef = int(getattr(visualsearch_settings, setting))
    rng = np.random.default_rng(args.seed + 3)
    idx = rng.choice(n, args.filtered_queries, replace=False)
    cats = rng.integers(1, args.categories + 1, len(idx))
    members = [np.flatnonzero(categories == c) for c in cats]
    truth = exact_top(vectors, vectors[idx], 10, exclude=idx, rows=members)
    raw = Raw(kind, d)
    ids = idx + 1
    join = {"IMAGE_FILTER_FIELDS": {}}
    cases = {
        "raw exact, copy (B-tree on the image table)": ("raw", dict(exact=True, copy=True)),
        "app similar_products (auto), copy": ("app", {}),
    }
    if partial:
        cases = {
            f"raw partial HNSW index (ef {app_ef})": (
                "raw",
                dict(ef=app_ef, copy=True, sort=False),
            ),
            "app similar_products (auto), partial index": ("app", {}),
            "raw exact, copy (B-tree on the image table)": ("raw", dict(exact=True, copy=True)),
        }
    elif not (clustered and args.cluster) and not covering:
        cases = {
            "raw post-filter (ef 40)": ("raw", dict(ef=40, iterative="off")),
            "raw iterative relaxed (ef 100)": ("raw", dict(ef=100, iterative="relaxed_order")),
            "raw exact, join (B-tree on the product table)": ("raw", dict(exact=True)),
            **cases,
            "app similar_products (auto), join": ("app", join),
            "app similar_products (iterative), copy": ("app", dict(EXACT_SEARCH_MAX_ROWS=0)),
        }
    from visualsearch.query import estimated_rows, get_image_model

    images = get_image_model().objects.ready().filter(category_id=int(cats[0]))
    estimate = estimated_rows(images)
    rows = []
    for name, (path, opts) in cases.items():
        lat, rec, cnt = [], [], []
        halfvec = kind == "halfvec"
        if path == "raw":
            raw.configure(opts.get("ef", 40), opts.get("iterative", "off"), opts.get("sort", True))
            exact, copy = opts.get("exact", False), opts.get("copy", False)

            def run(i, exact=exact, copy=copy):
                return raw.query(
                    vectors[idx[i]], int(ids[i]), category=int(cats[i]), exact=exact, copy=copy
                )

            ctx = app_settings(HNSW_HALFVEC=halfvec)
        else:

            def run(i):
                return app_similar(int(ids[i]), category_id=int(cats[i]))

            ctx = app_settings(HNSW_HALFVEC=halfvec, **opts)
        with ctx:
            cold = [timed(run, i)[0] for i in range(len(idx))]
            for i in range(len(idx)):
                ms, found = timed(run, i)
                lat.append(ms)
                rec.append(recall(found, truth[i]))
                cnt.append(len(found))
        rows.append(
            {
                "n": n,
                "d": d,
                "index": kind,
                "filter": "category (1 of 200)",
                "case": name
                + (", clustered" if clustered else "")
                + (", covering index" if covering else ""),
                "ef_search": opts.get("ef") if path == "raw" else app_ef,
                "estimated_rows": estimate,
                **summarise(lat, rec, cnt),
                "cold_p50_ms": round(statistics.median(cold), 3),
            }
        )
        _print_rows(rows[-1:])
    return rows


def build_partial_indexes(kind: str, args) -> dict:
    """One partial HNSW index per category with at least ``--partial-indexes`` images, built by
    the app (``visualsearch.filter_indexes``, what ``visualsearch_filter_indexes`` runs)."""
    from django.db import connection

    from visualsearch import filter_indexes

    with connection.cursor() as cursor:
        maintenance_settings(cursor, args)
    settings = dict(HNSW_HALFVEC=kind == "halfvec", HNSW_M=args.m)
    with app_settings(**settings, HNSW_EF_CONSTRUCTION=args.ef_construction):
        started = time.perf_counter()
        made = filter_indexes.create("category", args.partial_indexes)
        seconds = time.perf_counter() - started
        values = filter_indexes.indexed_values().get("category", set())
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), sum(pg_relation_size(c.oid)) FROM pg_class c"
            " WHERE c.relname LIKE 'vs_filter_%'"
        )
        count, size = cursor.fetchone()
    print(
        f"built {len(made)} partial indexes in {seconds:.1f} s ({len(values)} in all)", flush=True
    )
    return {
        "partial_indexes": count,
        "partial_build_s": round(seconds, 1),
        "partial_index_mb": round(float(size or 0) / 2**20, 1),
    }


def build_covering_index(args) -> dict:
    """The copy's covering index (``visualsearch.models.filter_scan_index("category")``),
    created through the schema editor as a migration would, then ``VACUUM`` (index-only scans
    skip the table on all-visible pages only)."""
    from django.db import connection

    from shop.catalog.models import ProductImage
    from visualsearch.models import filter_scan_index

    index = filter_scan_index("category", name="productimage_category_scan")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {index.name}")
        maintenance_settings(cursor, args)
    started = time.perf_counter()
    with connection.schema_editor() as editor:
        editor.add_index(ProductImage, index)
    seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalog_productimage")
        cursor.execute(f"SELECT pg_relation_size('{index.name}')")
        size = cursor.fetchone()[0]
    print(f"built the covering index in {seconds:.1f} s, {size / 2**20:.0f} MB", flush=True)
    return {"covering_build_s": round(seconds, 1), "covering_index_mb": round(size / 2**20, 1)}


def category_index() -> tuple[str, bool]:
    """The name of the image table's index on the category copy, and whether the table was
    last clustered by it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, i.indisclustered FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = 'catalog_productimage'::regclass"
            " AND pg_get_indexdef(i.indexrelid) LIKE '%(category_id)'"
        )
        return cursor.fetchone()


def cluster_by_category(args) -> float:
    """``CLUSTER`` the image table by its category copy's index (rebuilds every index of the
    table, the HNSW one too, with the build's memory); returns the seconds it took."""
    from django.db import connection

    name, _clustered = category_index()
    with connection.cursor() as cursor:
        maintenance_settings(cursor, args)
        started = time.perf_counter()
        cursor.execute(f"CLUSTER catalog_productimage USING {name}")
        seconds = time.perf_counter() - started
        cursor.execute("ANALYZE catalog_productimage")
    print(f"clustered the image table by {name} in {seconds:.1f} s", flush=True)
    return seconds


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n{title}")
    widths = [max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True)))


def machine() -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), extversion FROM pg_extension WHERE extname = 'vector'")
        version, pgvector = cursor.fetchone()
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "postgres": version.split(",")[0],
        "pgvector": pgvector,
        "shared_buffers": shared_buffers,
    }


def main() -> None:
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
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    indexes = args.indexes.split(",")
    storages = args.storage.split(",")

    setup_django(configs[0][1])
    from django.conf import settings

    settings.DEBUG = False  # no query log: it formats every vector into the SQL it keeps
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    results = {
        "machine": machine(),
        "args": vars(args),
        "builds": [],
        "unfiltered": [],
        "filtered": [],
    }
    output = Path(args.output or BASE_DIR / "bench" / "results" / f"query-{args.configs}.json")
    for n, d in configs:
        override = use_dimensions(d)
        for storage in storages:
            vectors, categories = load(n, d, args, storage)
            for kind in indexes:
                build = build_index(kind, d, args)
                results["builds"].append({"n": n, "d": d, "storage": storage, **build})
                for part, measure in (("unfiltered", unfiltered), ("filtered", filtered)):
                    if part in args.parts.split(","):  # "filtered" is in "unfiltered"
                        rows = measure(kind, n, d, vectors, categories, args)
                        results[part] += [{"storage": storage, **row} for row in rows]
                output.write_text(json.dumps(results, indent=2, default=str))
                if args.covering:
                    results["builds"][-1].update(build_covering_index(args))
                    rows = filtered(kind, n, d, vectors, categories, args, covering=True)
                    results["filtered"] += [{"storage": storage, **row} for row in rows]
                    output.write_text(json.dumps(results, indent=2, default=str))
                if args.cluster:
                    results["builds"][-1]["cluster_s"] = round(cluster_by_category(args), 1)
                    rows = filtered(kind, n, d, vectors, categories, args, clustered=True)
                    results["filtered"] += [{"storage": storage, **row} for row in rows]
                    output.write_text(json.dumps(results, indent=2, default=str))
                if args.partial_indexes:
                    results["builds"][-1].update(build_partial_indexes(kind, args))
                    rows = filtered(kind, n, d, vectors, categories, args, partial=True)
                    results["filtered"] += [{"storage": storage, **row} for row in rows]
                    output.write_text(json.dumps(results, indent=2, default=str))
            del vectors
        override.disable()
    print_table(
        "Index builds",
        results["builds"],
        ["n", "d", "storage", "index", "m", "ef_construction", "build_s", "index_mb", "table_mb"],
    )
    print_table(
        "Unfiltered top-10 (ms; ratio: median per query, app / raw doing the same work)",
        results["unfiltered"],
        [
            "n",
            "d",
            "storage",
            "index",
            "ef_search",
            "path",
            "p50_ms",
            "p95_ms",
            "recall",
            "qps_2clients",
            "ratio_to_raw",
        ],
    )
    print_table(
        "Filtered top-10, category = 1 of 200",
        results["filtered"],
        [
            "n",
            "d",
            "storage",
            "index",
            "case",
            "estimated_rows",
            "p50_ms",
            "p95_ms",
            "cold_p50_ms",
            "recall",
            "rows",
        ],
    )
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
