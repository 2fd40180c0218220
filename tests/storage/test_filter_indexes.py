"""Partial HNSW indexes for frequent filter values (visualsearch_filter_indexes)."""

from __future__ import annotations

from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.conftest import ready_images
from tests.knn import is_knn
from visualsearch.query import nearest_products, similar_products
from visualsearch.storage import filter_indexes

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def forget_indexes():
    """Each test builds its own indexes (and its transaction takes them away again)."""
    filter_indexes._found.clear()
    yield
    filter_indexes._found.clear()


@pytest.fixture
def two_categories(db):
    """150 shoes and 40 shirts with ready random unit vectors (the copy set as bulk writers do)."""
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    shirts = Category.objects.create(name="Shirts", slug="shirts")
    products = Product.objects.bulk_create(
        Product(name=f"p{i}", slug=f"p{i}", category=shoes if i < 150 else shirts)
        for i in range(190)
    )
    vectors = ready_images(products, seed=7)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE catalog_productimage")
    return {"products": products, "vectors": vectors, "shoes": shoes, "shirts": shirts}


def partial_indexes() -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE 'vs_filter_%'"
        )
        return dict(cursor.fetchall())


def test_the_command_indexes_values_with_enough_images(two_categories):
    out = StringIO()
    call_command("visualsearch_filter_indexes", "--min-rows", "100", "--no-progress", stdout=out)
    assert "category: built 1 partial index(es); 1 value(s) have one." in out.getvalue()
    [definition] = partial_indexes().values()
    assert "USING hnsw" in definition
    assert f"WHERE (category_id = {two_categories['shoes'].pk})" in definition
    assert filter_indexes.indexed_values() == {"category": {two_categories["shoes"].pk}}
    out = StringIO()  # again: nothing new to build
    call_command("visualsearch_filter_indexes", "--min-rows", "100", "--no-progress", stdout=out)
    assert "built 0 partial index(es); 1 value(s) have one." in out.getvalue()
    call_command("visualsearch_filter_indexes", "--drop", stdout=out)
    assert "Dropped 1 partial index(es)." in out.getvalue() and not partial_indexes()


def test_a_filter_on_an_indexed_value_walks_its_partial_index(two_categories, settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "FILTER_INDEX_EF_SEARCH": 321}
    shoes, shirts = two_categories["shoes"], two_categories["shirts"]
    filter_indexes.create("category", 100)
    assert filter_indexes.serving_index({"category": shoes})
    assert filter_indexes.serving_index({"category_id": shoes.pk})
    assert not filter_indexes.serving_index({"category": shirts})
    assert not filter_indexes.serving_index({"category": shoes, "in_stock": True})

    query = two_categories["vectors"][3]
    with CaptureQueriesContext(connection) as queries:
        found = nearest_products(query, 5, category=shoes)
    sqls = [q["sql"] for q in queries.captured_queries]
    [knn] = [sql for sql in sqls if is_knn(sql)]
    assert "<#>" not in knn  # the index's ordering, not an exact scan
    [settings_sql] = [sql for sql in sqls if "force_custom_plan" in sql]
    assert "enable_sort = off" in settings_sql and "hnsw.ef_search = 321" in settings_sql
    assert not any(sql.startswith("EXPLAIN") for sql in sqls)  # no estimate needed
    shoe_rows = np.arange(150)
    truth = shoe_rows[np.argsort(-(two_categories["vectors"][shoe_rows] @ query))][:5]
    products = two_categories["products"]
    assert len({p.pk for p in found} & {products[i].pk for i in truth}) >= 4  # approximate

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + knn)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "vs_filter_" in plan  # the partial index serves it

    similar = similar_products(products[0], 5, category=shoes)
    assert len(similar) == 5 and all(p.category_id == shoes.pk for p in similar)
    exact = similar_products(products[160], 5, category=shirts)  # no index: the exact scan
    assert len(exact) == 5 and all(p.category_id == shirts.pk for p in exact)


def test_bad_arguments_are_command_errors(two_categories, settings):
    with pytest.raises(CommandError, match="Not copied fields: colour"):
        call_command("visualsearch_filter_indexes", "--field", "colour")
    with pytest.raises(CommandError, match="--min-rows must be at least 1"):
        call_command("visualsearch_filter_indexes", "--min-rows", "0")
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "IMAGE_FILTER_FIELDS": {}}
    with pytest.raises(CommandError, match="IMAGE_FILTER_FIELDS"):
        call_command("visualsearch_filter_indexes")


def test_halfvec_partial_indexes_build_and_serve(two_categories, settings):
    """With HNSW_HALFVEC the index is on the expression ``embedding::halfvec(n)``: its SQL
    must build in Postgres, and a filtered query must order by the same expression."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "HNSW_HALFVEC": True}
    shoes = two_categories["shoes"]
    filter_indexes.create("category", 100)
    [definition] = partial_indexes().values()
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    assert f"::halfvec({dimensions})) halfvec_cosine_ops" in definition
    query = two_categories["vectors"][3]
    with CaptureQueriesContext(connection) as queries:
        found = nearest_products(query, 5, category=shoes)
    [knn] = [q["sql"] for q in queries.captured_queries if is_knn(q["sql"])]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN " + knn)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "vs_filter_" in plan
    assert len(found) == 5 and all(p.category_id == shoes.pk for p in found)
