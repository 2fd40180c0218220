"""Similar products, search by image and by text through the HNSW index."""

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from PIL import Image

from shop.catalog.models import Category, ProductImage
from tests.conftest import make_image_bytes
from tests.knn import is_knn
from visualsearch.encoders import TextEncodingNotSupported
from visualsearch.ingest.pipeline import embed_images
from visualsearch.query import (
    nearest_products,
    search_by_image,
    search_by_text,
    similar_products,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def catalog(make_product):
    """Ten colours x two shapes, one or two images each, all embedded."""
    products = []
    for color in ["red", "blue", "green", "orange", "purple", "black", "yellow", "cyan"]:
        for shape in ["square", "circle"]:
            products.append(
                make_product(color=color, shape=shape, images=2 if shape == "circle" else 1)
            )
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return products


def test_similar_products_excludes_itself_and_groups_by_product(catalog):
    product = catalog[0]
    results = similar_products(product, k=5)
    ids = [p.pk for p in results]
    assert len(results) == 5
    assert product.pk not in ids
    assert len(set(ids)) == len(ids)  # several images of one product count once
    distances = [p.distance for p in results]
    assert distances == sorted(distances)
    assert all(np.isclose(p.similarity, 1 - p.distance) for p in results)


def test_identical_photo_ranks_first(catalog, make_product):
    twin = make_product(color="red", shape="square")
    embed_images(twin.images.values_list("pk", flat=True))
    results = similar_products(twin, k=3)
    assert results[0].name.startswith("red square")
    assert results[0].distance == pytest.approx(0, abs=1e-4)


def test_filters_apply_to_product_fields(catalog):
    other = Category.objects.create(name="Shoes", slug="shoes")
    for product in catalog[::3]:
        product.category = other
        product.save()
    results = similar_products(catalog[1], k=4, category=other)
    assert len(results) == 4
    assert {p.category_id for p in results} == {other.pk}
    assert similar_products(catalog[1], k=50, price__gt=1000) == []


def test_filtered_query_returns_k_when_k_exist(catalog):
    catalog[5].in_stock = False
    catalog[5].save()
    catalog[9].in_stock = False
    catalog[9].save()
    results = similar_products(catalog[0], k=10, in_stock=False)
    assert sorted(p.pk for p in results) == sorted([catalog[5].pk, catalog[9].pk])


def test_product_without_embedding_has_no_similar_products(catalog, make_product):
    assert similar_products(make_product(), k=5) == []


def test_search_by_image_finds_the_same_photo(catalog):
    results = search_by_image(make_image_bytes("green", "circle"), k=3)
    assert results[0].name.startswith("green circle")
    assert results[0].distance == pytest.approx(0, abs=1e-4)
    pil = Image.open(__import__("io").BytesIO(make_image_bytes("green", "circle")))
    assert search_by_image(pil, k=1)[0].pk == results[0].pk


def test_search_by_text_uses_the_text_tower(catalog):
    results = search_by_text("a green circle", k=4)
    assert len(results) == 4
    with pytest.raises(ValueError):
        search_by_text("   ")


def test_search_by_text_without_text_tower_is_a_clear_error(catalog, settings):
    from visualsearch.models import EncoderGeneration

    EncoderGeneration.objects.all().delete()  # a shop that never served another encoder
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
        "ENCODER_OPTIONS": {},
    }
    with pytest.raises(TextEncodingNotSupported, match="no text tower"):
        search_by_text("red shirt")


def test_queries_never_mix_encoder_models(catalog):
    ProductImage.objects.filter(product=catalog[1]).update(embedding_model="clip:older-model")
    ids = [p.pk for p in similar_products(catalog[0], k=100)]
    assert catalog[1].pk not in ids
    assert len(ids) == len(catalog) - 2


def test_similar_products_query_uses_the_hnsw_index(catalog):
    rng = np.random.default_rng(0)
    product = catalog[0]
    image = product.images.first()
    # Enough rows that the planner prefers the index on its own.
    rows = [
        ProductImage(
            product=catalog[i % len(catalog)],
            image=image.image.name,
            embedding=v / np.linalg.norm(v),
            embedding_status="ready",
            embedding_model=image.embedding_model if image.embedding_model else "",
        )
        for i, v in enumerate(rng.normal(size=(3000, 32)).astype(np.float32))
    ]
    ProductImage.objects.bulk_create(rows, batch_size=1000)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {ProductImage._meta.db_table}")
    with CaptureQueriesContext(connection) as queries:
        assert len(similar_products(product, k=8)) == 8
    knn = [q["sql"] for q in queries.captured_queries if is_knn(q["sql"]) and "LIMIT" in q["sql"]]
    assert len(knn) == 1, [q["sql"] for q in queries.captured_queries]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute("EXPLAIN " + knn[0])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using productimage_hnsw" in plan, plan


def test_nearest_products_k_below_one():
    assert nearest_products(np.ones(32, dtype=np.float32), k=0) == []
