"""The bench database: Django on the synthetic encoder, a raw psycopg connection, and the
catalog tables loaded with synthetic vectors by binary ``COPY``."""

from __future__ import annotations

import os
import time
from decimal import Decimal

import numpy as np

from bench.common import shop
from bench.query.synthetic import MODEL_ID, clustered_vectors

#: The database on the embedded server, unless ``VISUALSEARCH_DB_NAME`` says otherwise.
DATABASE = "vs_bench_query"
ENCODER = "bench.query.synthetic.SyntheticEncoder"


def setup_django(dimensions: int) -> None:
    """Django with the shop's settings and the synthetic encoder of ``dimensions``."""
    shop.setup_django(
        DATABASE, visualsearch={"ENCODER": ENCODER, "ENCODER_OPTIONS": {"dimensions": dimensions}}
    )


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
            " embedded_at, embedding_updated_at, category_id, embedding_attempts)"
            " FROM STDIN WITH (FORMAT BINARY)"
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
                    "int4",
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
                            0,
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
