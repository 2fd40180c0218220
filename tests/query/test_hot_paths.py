"""The product page's hot paths at 1280 dimensions (issue 21): generic plans keep the HNSW
index, exploration samples take any number of ids, vectors come back in binary, small
matrix products run on one BLAS thread."""

from __future__ import annotations

import re

import numpy as np
import psycopg.sql
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.conftest import ready_images
from tests.knn import is_knn
from visualsearch.query import diversity, knn, similar_products
from visualsearch.query.recommend import recommend
from visualsearch.storage.layout import image_storage


@pytest.fixture
def catalog(transactional_db):
    """300 products, one ready random unit vector each; ANALYZEd."""
    shelf = Category.objects.create(name="Shelf", slug="shelf")
    products = Product.objects.bulk_create(
        Product(name=f"p{i}", slug=f"p{i}", category=shelf) for i in range(300)
    )
    vectors = ready_images(products, seed=21)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE catalog_product")
        cursor.execute("ANALYZE catalog_productimage")
    return {"products": products, "vectors": vectors}


def generic_plan(sql: str, params: tuple, settings: str) -> str:
    """``EXPLAIN`` of ``sql`` prepared with ``params`` as parameters and planned as a generic
    plan (what a prepared statement settles on after five runs), under ``settings``."""
    numbered = iter(range(1, len(params) + 1))
    sql = re.sub("%s", lambda _match: f"${next(numbered)}", sql)
    kinds = ((bool, "boolean"), (int, "bigint"), (float, "float8"), (str, "text"))
    types = [next(t for kind, t in kinds if isinstance(v, kind)) for v in params]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL plan_cache_mode = force_generic_plan; {settings}")
        connection.connection.execute(f"PREPARE vs_hot ({', '.join(types)}) AS {sql}")
        try:
            raw = connection.connection
            values = ", ".join(psycopg.sql.Literal(str(v)).as_string(raw) for v in params)
            cursor.execute(f"EXPLAIN EXECUTE vs_hot({values})")
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("DEALLOCATE vs_hot")


def test_a_generic_plan_of_similar_products_walks_the_hnsw_index(catalog):
    """On a small catalog the generic plan (status and model are parameters) priced reading
    every row and sorting below the index: the k-NN statement runs with sorting off."""
    product = catalog["products"][0]
    with CaptureQueriesContext(connection) as queries:
        found = similar_products(product, 5)
    assert len(found) == 5
    sqls = [q["sql"] for q in queries.captured_queries]
    [settings_sql] = [sql for sql in sqls if "hnsw.ef_search" in sql]
    assert "enable_sort = off" in settings_sql

    values = {"mean_of": product.pk, "exclude": product.pk}
    sql, params = knn._knn_queryset(
        image_storage(), values, limit=20, exact=False, filters={}
    ).query.sql_with_params()
    plan = generic_plan(sql, params, knn._set_local({"enable_sort": "off"}))
    assert "productimage_hnsw" in plan and "Sort" not in plan


def test_sorting_stays_off_only_for_the_statement(catalog):
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_sort")
        before = cursor.fetchone()[0]
    rows = knn.run("SELECT 1, current_setting('enable_sort')", (), "default", 5)
    assert rows == [(1, "off")]
    with connection.cursor() as cursor:
        cursor.execute("SHOW enable_sort")
        assert cursor.fetchone()[0] == before


def test_an_exploration_sample_takes_thousands_of_ids_in_one_statement(catalog):
    """17 runs each repeating a pk__in filter of 5,000 ids passed Postgres' 65,535
    parameters; the products are now written once."""
    pks = [p.pk for p in catalog["products"]]
    wanted = pks + list(range(10**6, 10**6 + 4700))  # ids beyond the catalog count too
    products = Product.objects.filter(pk__in=wanted).exclude(pk__in=pks[:10])
    with CaptureQueriesContext(connection) as queries:
        drawn = diversity.sample_pks(products, 40, seed=pks[:10])
    assert sum("sample_keys" in q["sql"] for q in queries.captured_queries) == 1
    assert len(drawn) == 40 == len(set(drawn))
    assert set(drawn) <= set(pks[10:])
    assert max(drawn) - min(drawn) > len(pks) / 2  # spread over the key range
    assert drawn == diversity.sample_pks(products, 40, seed=pks[:10])  # same day, same seed


def test_recommendations_take_a_filter_of_every_id(catalog):
    """A pk__in of thousands of ids travels as one array parameter in every statement."""
    pks = [p.pk for p in catalog["products"]] + list(range(10**6, 10**6 + 4700))
    with CaptureQueriesContext(connection) as queries:
        picks = recommend(pks[:3], 6, exclude=pks[3:40], pk__in=pks)
    assert len(picks) == 6 and not {p.pk for p in picks} & set(pks[:3])
    assert all(p.pk in set(pks) for p in picks)
    assert any("unnest" in q["sql"] for q in queries.captured_queries)
    carrying = [q["sql"] for q in queries.captured_queries if "1004321" in q["sql"]]
    assert carrying and all("unnest" in sql for sql in carrying)
    inside = recommend(pks[:3], 6, exclude=pks[3:40], pk__in=pks[40:60])
    assert {p.pk for p in inside} <= set(pks[40:60])


def test_compact_filters_keep_short_lists_and_other_values():
    ids = list(range(1, 500))
    compacted = knn.compact_filters({"pk__in": ids, "category__in": [1, 2], "in_stock": True})
    assert compacted["category__in"] == [1, 2] and compacted["in_stock"] is True
    assert "unnest" in compacted["pk__in"].sql and compacted["pk__in"].params == (ids,)
    assert knn.compact_filters({"slug__in": [str(i) for i in ids]})["slug__in"][0] == "1"


def test_vectors_come_back_in_binary_as_stored(catalog):
    products, vectors = catalog["products"], catalog["vectors"]
    pks = [p.pk for p in products[:50]]
    found = diversity.product_vectors(pks)
    assert list(found) == pks
    for index, pk in enumerate(pks):
        np.testing.assert_allclose(found[pk], vectors[index], rtol=1e-6, atol=1e-6)
    # several images of one product: their mean, as before
    extra = ProductImage.objects.get(product=products[0])
    extra.pk, extra.source = None, "second"
    extra.embedding = vectors[1]
    ProductImage.objects.bulk_create([extra])
    mean = diversity.unit(vectors[:2].mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(diversity.product_vectors([pks[0]])[pks[0]], mean, atol=1e-6)


def test_small_matrix_products_run_on_one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with diversity.single_threaded():
        blas = [
            info["num_threads"]
            for info in threadpoolctl.threadpool_info()
            if info["user_api"] == "blas"
        ]
    assert blas and set(blas) == {1}
    rng = np.random.default_rng(0)
    candidates = diversity.unit(rng.standard_normal((50, 32)))
    assert len(set(diversity.coverage(candidates, 5))) == 5
    chosen = diversity.maximal_marginal_relevance(np.ones(50), candidates, 4)
    assert len(set(chosen)) == 4


def test_the_knn_statement_is_still_one_statement(catalog):
    with CaptureQueriesContext(connection) as queries:
        similar_products(catalog["products"][3], 5)
    assert sum(is_knn(q["sql"]) for q in queries.captured_queries) == 1


def test_the_preference_is_one_statement_and_the_same_mean(catalog, settings):
    from visualsearch.query.recommend import preference_vector

    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "RECOMMEND_FOCUS": 0.0}
    products, vectors = catalog["products"], catalog["vectors"]
    # five viewed: two near the latest one (within the focus), two far from it
    viewed = [p.pk for p in products[:5]]
    latest = vectors[4]
    near = [i for i in range(4) if float(vectors[i] @ latest) >= 0.0]
    for focus, counted in ((0.0, [0, 1, 2, 3, 4]), (1e-9, [*near, 4])):
        settings.VISUALSEARCH = {**settings.VISUALSEARCH, "RECOMMEND_FOCUS": focus}
        with CaptureQueriesContext(connection) as queries:
            mean = preference_vector(viewed)
        assert sum("AVG(" in q["sql"] for q in queries.captured_queries) == 1
        np.testing.assert_allclose(mean, vectors[counted].mean(axis=0), atol=1e-6)
    # the latest product without a ready image: every viewed product counts
    ProductImage.objects.filter(product=products[4]).update(embedding_status="pending")
    np.testing.assert_allclose(preference_vector(viewed), vectors[:4].mean(axis=0), atol=1e-6)
