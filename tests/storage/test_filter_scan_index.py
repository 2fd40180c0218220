"""The covering index for exact scans over one filter value (``filter_scan_index``)."""

from __future__ import annotations

import re

import numpy as np
import psycopg.sql
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.conftest import ready_images
from tests.knn import is_knn
from visualsearch.models import filter_scan_index
from visualsearch.query import knn, nearest_products, similar_products
from visualsearch.storage.layout import image_storage

NAME = "productimage_category_scan"


@pytest.fixture
def catalog(transactional_db, settings):
    """400 products with one ready random unit vector each, 30 of them in "Rare"; the exact
    scan answers a filter on it (``EXACT_SEARCH_MAX_ROWS`` 100)."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "EXACT_SEARCH_MAX_ROWS": 100}
    rare = Category.objects.create(name="Rare", slug="rare")
    common = Category.objects.create(name="Common", slug="common")
    products = Product.objects.bulk_create(
        Product(name=f"p{i}", slug=f"p{i}", category=rare if i < 30 else common) for i in range(400)
    )
    vectors = ready_images(products, seed=11)
    return {"products": products, "vectors": vectors, "rare": rare}


@pytest.fixture
def scan_index(catalog):
    """The index, built as a migration builds it; VACUUM marks the pages all-visible."""
    index = filter_scan_index("category", name=NAME)
    with connection.schema_editor() as editor:
        editor.add_index(ProductImage, index)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE catalog_productimage")
    yield index
    with connection.schema_editor() as editor:
        editor.remove_index(ProductImage, index)


def plan_of(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def generic_plan_of_similar(product, category) -> str:
    """The plan of similar_products' exact k-NN statement prepared with its values as
    parameters, as a generic plan (what a prepared statement may settle on), with the plain
    index on the category dropped and sequential scans off for the while (on 400 rows the
    planner prefers either): whether a generic plan can use the covering index at all (a
    partial one, ``WHERE embedding_status = 'ready'``, it cannot: the status is a parameter).
    """
    values = {"mean_of": product.pk, "exclude": product.pk, "filter:category": category.pk}
    sql, params = knn._knn_queryset(
        image_storage(), values, limit=20, exact=True, filters={"category": category.pk}
    ).query.sql_with_params()
    numbered = iter(range(1, len(params) + 1))
    sql = re.sub("%s", lambda _match: f"${next(numbered)}", sql)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off"
        )
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'catalog_productimage'"
            " AND indexdef LIKE '%%btree (category_id)'"
        )
        cursor.execute(f"DROP INDEX {cursor.fetchone()[0]}")  # rolled back below
        kinds = ((bool, "boolean"), (int, "bigint"), (float, "float8"), (str, "text"))
        types = [next(t for kind, t in kinds if isinstance(v, kind)) for v in params]
        # Without parameters psycopg sends the simple protocol: "$1" stays PREPARE's own.
        connection.connection.execute(f"PREPARE vs_generic ({', '.join(types)}) AS {sql}")
        try:
            # EXECUTE's arguments are typed when it runs, not parsed: send them as literals.
            raw = connection.connection
            values = ", ".join(psycopg.sql.Literal(str(v)).as_string(raw) for v in params)
            cursor.execute(f"EXPLAIN EXECUTE vs_generic({values})")
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE vs_generic")
            transaction.set_rollback(True)


def test_the_exact_scan_reads_the_covering_index_alone(catalog, scan_index):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_get_indexdef(%s::regclass)", [NAME])
        definition = cursor.fetchone()[0]
    assert definition.endswith(
        "(category_id) INCLUDE (product_id, embedding_status, embedding_model, embedding)"
    )

    products, vectors, rare = catalog["products"], catalog["vectors"], catalog["rare"]
    with CaptureQueriesContext(connection) as queries:
        similar = similar_products(products[0], 5, category=rare)
    [knn] = [q["sql"] for q in queries.captured_queries if is_knn(q["sql"])]
    assert "<#>" in knn  # the exact scan
    assert f"Index Only Scan using {NAME}" in plan_of(knn)
    assert f"Index Only Scan using {NAME}" in generic_plan_of_similar(products[0], rare)
    # the same answer as brute force over the category
    order = np.argsort(-(vectors[1:30] @ vectors[0]))[:5] + 1
    assert [p.pk for p in similar] == [products[i].pk for i in order]
    assert [p.distance for p in similar] == pytest.approx(
        [1 - float(vectors[i] @ vectors[0]) for i in order], abs=1e-5
    )
    found = nearest_products(vectors[7], 3, category=rare)
    assert [p.pk for p in found] == [
        products[i].pk for i in np.argsort(-(vectors[:30] @ vectors[7]))[:3]
    ]


def test_vectors_too_long_for_a_btree_entry_are_refused(settings):
    wide = {"ENCODER": "tests.encoders.WideEncoder", "ENCODER_OPTIONS": {}}
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, **wide}
    with pytest.raises(ImproperlyConfigured, match="up to 600 dimensions.*have 768"):
        filter_scan_index("category")
