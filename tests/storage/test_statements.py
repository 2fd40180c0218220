"""Compiled statements reused by shape: the same SQL and parameters as a fresh compile."""

from __future__ import annotations

import re
from decimal import Decimal

import numpy as np
import pytest
from django.db import connection
from django.db.models import QuerySet
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.knn import is_knn
from visualsearch.query import nearest_products, similar_products
from visualsearch.storage import statements
from visualsearch.storage.statements import compiled, freeze

pytestmark = pytest.mark.django_db


def knn_statements() -> list:
    return [key for key in statements._cache if key[0] not in ("estimate", "in_bulk")]


def by_name(values):
    products = Product.objects.filter(name__startswith="p")
    if values["exclude"]:
        products = products.exclude(pk__in=values["exclude"])
    return products.filter(name=values["name"], category_id=values["category"])


def fresh(values):
    return by_name(values).query.sql_with_params()


def test_later_calls_swap_the_values_into_the_compiled_statement():
    statements.clear()
    first = {"name": "p1", "category": 1, "exclude": [4, 5]}
    second = {"name": "p2", "category": 7, "exclude": [8, 9]}
    assert compiled("names", by_name, first) == fresh(first)
    assert compiled("names", by_name, second) == fresh(second)
    sql, params = compiled("names", by_name, second)
    assert "-2000000" not in sql and "\x00" not in str(params)  # no marker left behind


def test_a_shape_the_markers_cannot_stand_for_is_compiled_per_call():
    def upper(values):  # the ORM never sees the marker: it is transformed first
        return Product.objects.filter(name=values["name"].upper())

    statements.clear()
    assert compiled("upper", upper, {"name": "a"}) == upper({"name": "a"}).query.sql_with_params()
    assert compiled("upper", upper, {"name": "b"})[1] == ("B",)
    assert compiled("other", by_name, {"name": 1.5, "category": 1, "exclude": []}) == fresh(
        {"name": 1.5, "category": 1, "exclude": []}
    )


def test_the_cache_is_bounded(monkeypatch):
    statements.clear()
    monkeypatch.setattr(statements, "SIZE", 3)
    for number in range(10):
        compiled(("n", number), by_name, {"name": "p", "category": number, "exclude": []})
    assert len(statements._cache) == 3


def test_freeze_keys_only_values_that_compile_alike(category):
    assert freeze(3) != freeze(True) and freeze(1) != freeze(1.0)
    assert freeze(category) == ("catalog.Category", category.pk)
    assert freeze([1, Decimal("2.5")]) == ("seq", (("int", 1), ("Decimal", Decimal("2.5"))))
    assert freeze({1, 2}) is None and freeze(Category.objects.all()) is None
    assert freeze(Category(name="unsaved")) is None


@pytest.fixture
def vectors(make_product, category):
    """Six products with ready random unit vectors, two of them in another category."""
    other = Category.objects.create(name="Other", slug="other")
    products = [make_product(category=other if i < 2 else category) for i in range(6)]
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((6, dimensions)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    from visualsearch.encoders import get_encoder

    model_id = get_encoder().model_id
    for product, vector in zip(products, matrix, strict=True):
        product.images.update(embedding=vector, embedding_status="ready", embedding_model=model_id)
    return products, matrix, other


def test_queries_through_cached_statements_match_brute_force(vectors, settings):
    products, matrix, other = vectors
    # A filter the planner expects few rows for: exact scans, so brute force is the truth.
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "EXACT_SEARCH_MAX_ROWS": 10**9}
    statements.clear()
    for index, product in enumerate(products):  # one shape, six different products
        similar = similar_products(product, 3, in_stock=True)
        order = [i for i in np.argsort(-(matrix @ matrix[index])) if i != index][:3]
        assert [p.pk for p in similar] == [products[i].pk for i in order]
        nearest = nearest_products(matrix[index], 2, exclude=[product.pk], in_stock=True)
        assert [p.pk for p in nearest] == [products[i].pk for i in order[:2]]
    assert 1 <= len(knn_statements()) <= 4  # similar and nearest shapes, not one per product
    filtered = similar_products(products[0], 3, category=other)
    assert [p.pk for p in filtered] == [products[1].pk]


def test_cached_and_fresh_statements_give_the_same_answers(vectors):
    products, _matrix, _other = vectors
    statements.clear()
    cached = [[p.pk for p in similar_products(product, 3)] for product in products]
    fresh = []
    for product in products:
        statements.clear()
        fresh.append([p.pk for p in similar_products(product, 3)])
    assert cached == fresh


def test_cached_statements_send_the_same_queries(vectors):
    products, _matrix, _other = vectors
    statements.clear()
    similar_products(products[0], 3)
    with CaptureQueriesContext(connection) as cold:
        statements.clear()
        similar_products(products[1], 3)
    with CaptureQueriesContext(connection) as warm:
        similar_products(products[1], 3)

    def sql(queries):  # savepoint names count up
        return [re.sub(r'"s\d+_x\d+"', "SP", q["sql"]) for q in queries.captured_queries]

    assert sql(warm) == sql(cold) and any(is_knn(q) for q in sql(warm))


def test_filter_values_travel_as_parameters_unless_they_cannot(vectors, category, settings):
    products, _matrix, other = vectors
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "EXACT_SEARCH_MAX_ROWS": 10**9}
    statements.clear()
    assert [p.pk for p in similar_products(products[0], 5, category_id=other.pk)] == [
        products[1].pk
    ]
    shapes = knn_statements()
    mine = similar_products(products[2], 5, category_id=category.pk)
    assert {p.pk for p in mine} == {p.pk for p in products[3:]}
    assert knn_statements() == shapes  # another category: the same statements
    Product.objects.filter(pk=products[3].pk).update(in_stock=False)
    in_stock = similar_products(products[2], 5, in_stock=True, category_id=category.pk)
    sold_out = similar_products(products[2], 5, in_stock=False, category_id=category.pk)
    assert [p.pk for p in sold_out] == [products[3].pk]  # a boolean is part of the key
    assert products[3].pk not in {p.pk for p in in_stock} and len(in_stock) == 2


def test_products_load_through_a_compiled_statement_with_converters(vectors):
    products, _matrix, _other = vectors
    statements.clear()
    pks = [products[3].pk, products[0].pk]
    loaded = statements.in_bulk(Product, pks)
    again = statements.in_bulk(Product, [products[1].pk, products[2].pk])
    expected = Product.objects.in_bulk(pks)
    assert set(loaded) == set(pks) and set(again) == {products[1].pk, products[2].pk}
    for pk, product in loaded.items():
        for field in Product._meta.concrete_fields:  # Decimal, datetime, FK ids, as the ORM
            assert getattr(product, field.attname) == getattr(expected[pk], field.attname)
        assert product._state.adding is False and product._state.db == "default"
    assert len([key for key in statements._cache if key[0] == "in_bulk"]) == 1
    assert statements.in_bulk(Product, []) == {}


def test_a_default_manager_with_filters_loads_through_the_orm(vectors, monkeypatch):
    products, _matrix, _other = vectors
    Product.objects.filter(pk=products[0].pk).update(in_stock=False)
    monkeypatch.setattr(
        Product._meta.default_manager.__class__,
        "get_queryset",
        lambda manager: QuerySet(Product, using=manager._db).filter(in_stock=True),
    )
    statements.clear()
    assert set(statements.in_bulk(Product, [products[0].pk, products[1].pk])) == {products[1].pk}
    assert not [key for key in statements._cache if key[0] == "in_bulk"]
