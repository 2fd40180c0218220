"""Filtered queries choose their strategy up front: exact over few rows, else the HNSW index."""

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.knn import is_knn
from visualsearch.encoders import get_encoder
from visualsearch.models import image_hnsw_index
from visualsearch.query import nearest_products, similar_products
from visualsearch.query.knn import estimated_rows, prefers_exact_scan

pytestmark = pytest.mark.django_db

RARE = 12  # products in the selective category; the common one holds the rest


@pytest.fixture
def vector_catalog(db):
    """600 products with one ready image each (random unit vectors); 12 in "Rare"."""
    rare = Category.objects.create(name="Rare", slug="rare")
    common = Category.objects.create(name="Common", slug="common")
    products = Product.objects.bulk_create(
        Product(name=f"p{i}", slug=f"p{i}", category=rare if i < RARE else common)
        for i in range(600)
    )
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(products), dimensions)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    model_id = get_encoder().model_id
    ProductImage.objects.bulk_create(
        ProductImage(
            product=product,
            category=product.category,  # bulk_create skips the signal that copies it
            image=f"products/{product.pk}.jpg",
            embedding=vector,
            embedding_status="ready",
            embedding_model=model_id,
        )
        for product, vector in zip(products, vectors, strict=True)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE catalog_product")
        cursor.execute("ANALYZE catalog_productimage")
    return {"products": products, "vectors": vectors, "rare": rare, "common": common}


@pytest.fixture
def threshold(settings):
    def set_threshold(rows):
        settings.VISUALSEARCH = {**settings.VISUALSEARCH, "EXACT_SEARCH_MAX_ROWS": rows}

    return set_threshold


def brute_force(catalog, query, k, category):
    ids = np.array([p.pk for p in catalog["products"]])
    keep = np.array([p.category_id == category.pk for p in catalog["products"]])
    sims = catalog["vectors"][keep] @ query
    return list(ids[keep][np.argsort(-sims)[:k]])


def knn_sql(queries):
    return [q["sql"] for q in queries.captured_queries if is_knn(q["sql"])]


def test_estimate_comes_from_the_planner(vector_catalog):
    images = ProductImage.objects.ready()
    rare = estimated_rows(images.filter(product__category=vector_catalog["rare"]))
    common = estimated_rows(images.filter(product__category=vector_catalog["common"]))
    assert 1 <= rare <= 60
    assert common >= 300


def test_selective_filter_is_answered_exactly(vector_catalog, threshold):
    threshold(100)
    query = vector_catalog["vectors"][500]
    with CaptureQueriesContext(connection) as queries:
        results = nearest_products(query, k=5, category=vector_catalog["rare"])
    assert [p.pk for p in results] == brute_force(vector_catalog, query, 5, vector_catalog["rare"])
    [sql] = knn_sql(queries)
    assert "<#>" in sql  # inner product: an ordering the cosine HNSW index cannot serve
    assert not any("hnsw" in q["sql"] for q in queries.captured_queries)
    assert any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)


def test_exact_scan_reports_cosine_distances(vector_catalog, threshold):
    """The exact scan ranks by inner product; what it reports is still the cosine distance,
    for a query of any length and for the mean of a product's images."""
    threshold(100)
    vectors, rare = vector_catalog["vectors"], vector_catalog["rare"]
    query = 3.5 * vectors[500]  # not unit length
    results = nearest_products(query, k=5, exact=True, category=rare)
    products = vector_catalog["products"]
    cosine = {p.pk: float(v @ vectors[500]) for p, v in zip(products, vectors, strict=True)}
    assert [p.distance for p in results] == pytest.approx(
        [1 - cosine[p.pk] for p in results], abs=1e-5
    )
    assert [p.pk for p in results] == [
        p.pk for p in nearest_products(vectors[500], k=5, exact=True, category=rare)
    ]
    # similar_products: the mean of product 0's (one) image, through the exact scan too
    me = products[0]
    with CaptureQueriesContext(connection) as queries:
        similar = similar_products(me, k=3, category=rare)
    assert "<#>" in knn_sql(queries)[0]
    mine = vectors[0]
    expected = sorted(
        (1 - float(v @ mine), p.pk) for p, v in zip(products[1:RARE], vectors[1:RARE], strict=True)
    )[:3]
    assert [p.pk for p in similar] == [pk for _, pk in expected]
    assert [p.distance for p in similar] == pytest.approx([d for d, _ in expected], abs=1e-5)


def test_unselective_filter_uses_the_index(vector_catalog, threshold):
    threshold(100)
    with CaptureQueriesContext(connection) as queries:
        results = nearest_products(
            vector_catalog["vectors"][0], k=5, category=vector_catalog["common"]
        )
    assert len(results) == 5
    assert {p.category_id for p in results} == {vector_catalog["common"].pk}
    [sql] = knn_sql(queries)
    assert "<#>" not in sql
    assert any("SET LOCAL hnsw.ef_search" in q["sql"] for q in queries.captured_queries)


def test_threshold_zero_never_estimates_and_still_returns_k(vector_catalog, threshold):
    threshold(0)
    query = vector_catalog["vectors"][300]
    with CaptureQueriesContext(connection) as queries:
        results = nearest_products(query, k=RARE, category=vector_catalog["rare"])
    assert not any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)
    # The index (iterative scan, then the exact fallback) still finds every rare product.
    assert sorted(p.pk for p in results) == sorted(
        brute_force(vector_catalog, query, RARE, vector_catalog["rare"])
    )


def test_unfiltered_query_skips_the_estimate(vector_catalog):
    with CaptureQueriesContext(connection) as queries:
        assert len(nearest_products(vector_catalog["vectors"][0], k=5)) == 5
    assert not any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)
    assert len(knn_sql(queries)) == 1


def test_prefers_exact_scan_follows_the_threshold(vector_catalog, threshold):
    rare = ProductImage.objects.ready().filter(product__category=vector_catalog["rare"])
    threshold(100)
    assert prefers_exact_scan(rare)
    threshold(1)
    assert not prefers_exact_scan(rare)
    threshold(0)
    assert not prefers_exact_scan(rare)


def test_halfvec_setting_orders_by_the_halfvec_expression(vector_catalog, settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "HNSW_HALFVEC": True}
    query = vector_catalog["vectors"][7]
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    with CaptureQueriesContext(connection) as queries:
        indexed = nearest_products(query, k=5)  # the index's expression
        exact = nearest_products(query, k=5, exact=True, category=vector_catalog["common"])
    [index_sql, exact_sql] = knn_sql(queries)
    assert f"::halfvec({dimensions})" in index_sql
    assert "halfvec" not in exact_sql  # an exact scan compares the full vectors
    assert [p.pk for p in exact] == brute_force(vector_catalog, query, 5, vector_catalog["common"])
    assert len(indexed) == 5


def test_image_index_definition_follows_halfvec_setting(settings):
    index = image_hnsw_index()
    assert index.fields == ["embedding"] and index.opclasses == ["vector_cosine_ops"]
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "HNSW_HALFVEC": True}
    index = image_hnsw_index()
    assert index.contains_expressions
    assert "halfvec_cosine_ops" in str(index.expressions)
