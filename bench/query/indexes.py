"""The indexes measured: the app's HNSW index, partial HNSW indexes per category, the category
copy's covering index, and ``CLUSTER`` by the category copy."""

from __future__ import annotations

import time

from bench.query.paths import app_settings


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


def build_partial_indexes(kind: str, args) -> dict:
    """One partial HNSW index per category with at least ``--partial-indexes`` images, built by
    the app (``visualsearch.storage.filter_indexes``, what ``visualsearch_filter_indexes`` runs)."""
    from django.db import connection

    from visualsearch.storage import filter_indexes

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
