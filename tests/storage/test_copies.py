"""Product fields copied onto the image rows (IMAGE_FILTER_FIELDS): kept in step, and used."""

from __future__ import annotations

from io import StringIO

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.knn import is_knn
from visualsearch.checks import check_settings
from visualsearch.encoders import get_encoder
from visualsearch.ingest.tasks import sweep_pending
from visualsearch.query import nearest_products, similar_products
from visualsearch.storage.copies import copied_fields, image_lookups, sync_copies

pytestmark = pytest.mark.django_db


@pytest.fixture
def shoes(db):
    return Category.objects.create(name="Shoes", slug="shoes")


def copies(product) -> set:
    return set(ProductImage.objects.filter(product=product).values_list("category_id", flat=True))


def test_the_suite_runs_with_the_demo_setting():
    assert set(copied_fields()) == {"category"}


def test_a_saved_image_takes_its_products_value(make_product, category):
    product = make_product(images=2)
    assert copies(product) == {category.pk}
    image = ProductImage(product_id=product.pk, image="products/x.jpg")  # no product loaded
    image.save()
    image.refresh_from_db()
    assert image.category_id == category.pk


def test_saving_a_product_moves_its_images(make_product, shoes, category):
    product = make_product(images=2)
    other = make_product()
    product.category = shoes
    product.save()
    assert copies(product) == {shoes.pk} and copies(other) == {category.pk}
    product.name = "renamed"
    with CaptureQueriesContext(connection) as queries:
        product.save(update_fields=["name"])  # the category is not among them: no UPDATE
    assert not any("catalog_productimage" in q["sql"] for q in queries.captured_queries)
    Product.objects.filter(pk=product.pk).update(category=category)  # bypasses signals
    product.refresh_from_db()
    product.save(update_fields=["category_id"])
    assert copies(product) == {category.pk}


def test_an_unchanged_copy_is_not_rewritten(make_product):
    product = make_product(images=3)
    with CaptureQueriesContext(connection) as queries:
        product.save()
    [update] = [q["sql"] for q in queries.captured_queries if "catalog_productimage" in q["sql"]]
    assert update.startswith("UPDATE") and "NOT" in update  # only rows whose copy differs
    assert ProductImage.objects.filter(product=product).count() == 3


def test_bulk_writes_are_put_right_by_the_sweep_and_the_reindex(make_product, shoes, category):
    product = make_product()
    ProductImage.objects.bulk_create([ProductImage(product=product, image="products/b.jpg")])
    assert copies(product) == {category.pk, None}
    sweep_pending()  # rows without a copy: found through the column's index
    assert copies(product) == {category.pk}
    Product.objects.filter(pk=product.pk).update(category=shoes)  # no signal
    assert sync_copies(missing_only=True) == 0  # the copies are set, only wrong
    out = StringIO()
    call_command("visualsearch_reindex", "--images", "--no-progress", stdout=out)
    assert "Copied product fields (IMAGE_FILTER_FIELDS) to 2 image(s)." in out.getvalue()
    assert copies(product) == {shoes.pk}
    assert sync_copies() == 0


def test_filters_on_a_copied_field_read_the_image_table(settings):
    assert image_lookups({"category": 3, "category_id__in": [1], "in_stock": True}) == {
        "category": 3,
        "category_id__in": [1],
        "product__in_stock": True,
    }
    assert image_lookups({"category__slug": "shoes"}) == {"category__slug": "shoes"}
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "IMAGE_FILTER_FIELDS": {}}
    assert image_lookups({"category": 3}) == {"product__category": 3}


@pytest.fixture
def vectors(make_product, shoes):
    """Eight products with ready random unit vectors, three of them shoes."""
    products = [make_product(**({"category": shoes} if i < 3 else {})) for i in range(8)]
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    matrix = np.random.default_rng(5).standard_normal((8, dimensions)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    for product, vector in zip(products, matrix, strict=True):
        product.images.update(
            embedding=vector, embedding_status="ready", embedding_model=get_encoder().model_id
        )
    return products, matrix


@pytest.mark.parametrize("copied", [True, False])
def test_filtered_queries_answer_the_same_with_or_without_copies(vectors, shoes, settings, copied):
    products, matrix = vectors
    if not copied:
        settings.VISUALSEARCH = {**settings.VISUALSEARCH, "IMAGE_FILTER_FIELDS": {}}
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "EXACT_SEARCH_MAX_ROWS": 100}
    with CaptureQueriesContext(connection) as queries:
        found = nearest_products(matrix[7], 3, category=shoes)
        slugged = similar_products(products[7], 3, category__slug="shoes")
    order = [products[i].pk for i in np.argsort(-(matrix[:3] @ matrix[7]))]
    assert [p.pk for p in found] == order and [p.pk for p in slugged] == order
    knn = [q["sql"] for q in queries.captured_queries if is_knn(q["sql"])]
    joined = ['INNER JOIN "catalog_product"' in sql for sql in knn]
    assert joined == [not copied, not copied]  # with copies the product table is not read


@pytest.mark.parametrize(
    "value, message",
    [
        (["category"], "must be a dict"),
        ({"category": ["category"]}, "must be a dict"),
        ({"colour": "category"}, "'colour' is not a field of catalog.ProductImage"),
        ({"category": "colour"}, "'colour' is not a field of catalog.Product"),
        ({"category": "name"}, "must both be foreign keys"),
        ({"alt_text": "price"}, "cannot hold 'price'"),
        ({"product": "category"}, "cannot hold a copy"),
    ],
)
def test_bad_settings_are_reported_by_e005(settings, value, message):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "IMAGE_FILTER_FIELDS": value}
    with pytest.raises(ImproperlyConfigured, match=message):
        copied_fields()
    errors = [m for m in check_settings() if m.id == "visualsearch.E005"]
    assert errors and message.split("'")[0] in errors[0].msg
