"""Vectors stay in the table rows (PLAIN storage), and similar products never ship vectors."""

import numpy as np
import pytest
from django.apps import apps
from django.db import connection
from django.db.migrations.state import ProjectState
from django.test.utils import CaptureQueriesContext

from shop.catalog.models import Category, Product, ProductImage
from tests.knn import is_knn
from visualsearch.checks import check_storage
from visualsearch.encoders import get_encoder
from visualsearch.query import nearest_products, similar_products
from visualsearch.storage.operations import EmbeddingStorage

pytestmark = pytest.mark.django_db


def storage(table="catalog_productimage"):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s)"
            " AND attname = 'embedding'",
            [table],
        )
        return cursor.fetchone()[0]


def set_column(sql):
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE catalog_productimage ALTER COLUMN embedding {sql}")


def test_the_demo_migration_keeps_image_vectors_in_the_rows():
    assert storage() == "p"


def test_operation_goes_back_to_external_and_forwards_to_plain():
    state = ProjectState.from_apps(apps)
    operation = EmbeddingStorage("productimage")
    with connection.schema_editor() as editor:
        operation.database_backwards("catalog", editor, state, state)
    assert storage() == "e"
    with connection.schema_editor() as editor:
        operation.database_forwards("catalog", editor, state, state)
    assert storage() == "p"
    assert operation.deconstruct() == ("EmbeddingStorage", [], {"model_name": "productimage"})
    assert operation.describe() == "Store productimage.embedding PLAIN"


def test_operation_rejects_an_unknown_storage():
    with pytest.raises(ValueError, match="storage must be one of"):
        EmbeddingStorage("productimage", storage="inline")


def test_toasted_large_vectors_are_a_warning():
    set_column("TYPE vector(512) USING NULL")
    set_column("SET STORAGE EXTERNAL")
    [message] = check_storage(connection)
    assert message.id == "visualsearch.W002"
    assert "512-d" in message.msg and "EmbeddingStorage('productimage')" in message.hint
    set_column("SET STORAGE MAIN")
    assert check_storage(connection) == []


def test_small_vectors_fit_the_row_whatever_the_storage():
    set_column("SET STORAGE EXTERNAL")  # the test encoder's 32-d vectors
    assert check_storage(connection) == []


@pytest.fixture
def two_products(db):
    category = Category.objects.create(name="Storage", slug="storage")
    products = Product.objects.bulk_create(
        Product(name=f"s{i}", slug=f"s{i}", category=category) for i in range(3)
    )
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((4, dimensions)).astype(np.float32)
    owners = [products[0], products[0], products[1], products[2]]
    ProductImage.objects.bulk_create(
        ProductImage(
            product=owner,
            image=f"products/s{i}.jpg",
            embedding=vector / np.linalg.norm(vector),
            embedding_status="ready",
            embedding_model=get_encoder().model_id,
        )
        for i, (owner, vector) in enumerate(zip(owners, vectors, strict=True))
    )
    return products, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_similar_products_computes_the_mean_in_the_query(two_products):
    products, vectors = two_products
    with CaptureQueriesContext(connection) as queries:
        results = similar_products(products[0], k=2)
    sqls = [q["sql"] for q in queries.captured_queries]
    assert not any(sql.startswith('SELECT "catalog_productimage"."embedding"') for sql in sqls)
    [knn] = [sql for sql in sqls if is_knn(sql)]
    assert "AVG(" in knn and "[" not in knn  # the mean, not a vector literal
    # The same ranking and distances as the normalised mean sent as a vector.
    mean = vectors[:2].mean(axis=0)
    expected = nearest_products(mean / np.linalg.norm(mean), k=2, exclude=products[0])
    assert [p.pk for p in results] == [p.pk for p in expected]
    assert np.allclose([p.distance for p in results], [p.distance for p in expected], atol=1e-5)


def test_similar_products_of_a_product_without_ready_images_runs_no_scan(two_products):
    products, _ = two_products
    ProductImage.objects.filter(product=products[0]).update(embedding_status="pending")
    assert similar_products(products[0], k=2) == []
    assert similar_products(products[0], k=2, category=products[1].category) == []


def test_similar_products_with_halfvec_orders_by_the_halfvec_mean(two_products, settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "HNSW_HALFVEC": True}
    products, vectors = two_products
    with CaptureQueriesContext(connection) as queries:
        results = similar_products(products[0], k=2)
    [knn] = [q["sql"] for q in queries.captured_queries if is_knn(q["sql"])]
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    assert "AVG(" in knn and knn.count(f"::halfvec({dimensions})") >= 2  # column and mean
    mean = vectors[:2].mean(axis=0)
    expected = nearest_products(mean / np.linalg.norm(mean), k=2, exclude=products[0])
    assert [p.pk for p in results] == [p.pk for p in expected]
