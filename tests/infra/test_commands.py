"""visualsearch_reindex and visualsearch_status, run like an operator would."""

import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from shop.catalog.models import ProductImage
from tests.conftest import queued_tasks
from tests.tiny_clip import build_tiny_clip
from visualsearch.checks import check_connection
from visualsearch.models import EmbeddingStatus

pytestmark = pytest.mark.django_db


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def statuses():
    return sorted(ProductImage.objects.values_list("embedding_status", flat=True))


def test_reindex_embeds_missing_inline_with_progress(make_product):
    for color in ("red", "blue", "green"):
        make_product(color=color, images=2)
    out, err = run("visualsearch_reindex", "--batch-size", "4")
    assert "6 image(s) to embed" in out
    assert "Done: 6 embedded" in out
    assert "6/6" in err  # the progress bar
    assert statuses() == ["ready"] * 6
    out, _ = run("visualsearch_reindex", "--no-progress")
    assert "0 image(s) to embed" in out


def test_reindex_failed_and_all(make_product):
    make_product(image_bytes=b"not an image")
    make_product()
    run("visualsearch_reindex", "--no-progress")
    assert statuses() == ["failed", "ready"]
    out, _ = run("visualsearch_reindex", "--failed", "--no-progress")
    assert "1 image(s) to embed" in out and "1 failed" in out
    out, _ = run("visualsearch_reindex", "--all", "--no-progress")
    assert "2 image(s) to embed" in out and "Done: 1 embedded" in out


def test_reindex_enqueue_sends_batches(make_product, broker):
    make_product(images=5)
    broker.flushdb()
    out, _ = run("visualsearch_reindex", "--enqueue", "--batch-size", "2")
    assert "Enqueued 5 image(s)" in out
    assert sorted(len(t["args"][2]) for t in queued_tasks(broker)) == [1, 2, 2]


def test_a_new_encoder_keeps_serving_the_old_vectors_until_reindex_switches(
    make_product, settings, tmp_path
):
    product = make_product(images=2)
    make_product(images=1)
    run("visualsearch_reindex", "--no-progress")
    old = {row.pk: np.asarray(row.embedding) for row in ProductImage.objects.all()}
    other = build_tiny_clip(tmp_path / "other-clip", projection_dim=32, image_size=32, seed=1)
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "ENCODER_OPTIONS": {"model": str(other)}}
    from visualsearch.query import similar_products

    assert len(similar_products(product)) == 1  # the previous encoder serves meanwhile
    out, _ = run("visualsearch_reindex", "--no-progress")
    assert "keeps serving while clip:other-clip:" in out and "serves now" in out
    for row in ProductImage.objects.all():
        assert row.embedding_model.startswith("clip:other-clip:")
        assert not np.allclose(np.asarray(row.embedding), old[row.pk])
    assert len(similar_products(product)) == 1


def test_resize_after_switching_to_an_encoder_of_another_size(make_product, settings):
    make_product(images=1)
    run("visualsearch_reindex", "--no-progress")
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
        "ENCODER_OPTIONS": {},
    }
    assert [m.id for m in check_connection(connection)] == ["visualsearch.E004"]
    out, _ = run("visualsearch_reindex", "--resize", "--no-progress")
    assert "Resized the vector column to 1280" in out and "Done: 1 embedded" in out
    assert check_connection(connection) == []
    assert np.asarray(ProductImage.objects.get().embedding).shape == (1280,)


def test_a_switch_to_another_size_without_resize_says_which_command(make_product, settings):
    make_product(images=1)
    run("visualsearch_reindex", "--no-progress")
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
        "ENCODER_OPTIONS": {},
    }
    with pytest.raises(CommandError, match="visualsearch_reindex --resize"):
        run("visualsearch_reindex", "--no-progress")


def test_resize_recreates_halfvec_and_filter_indexes_for_the_new_size(
    make_product, settings, tmp_path
):
    """HNSW_HALFVEC indexes and partial filter indexes are on ``embedding::halfvec(n)``:
    a resize that left them on the old size made every later write fail."""
    product = make_product(images=1)
    run("visualsearch_reindex", "--no-progress")
    table = ProductImage._meta.db_table
    category = product.category_id
    comment = json.dumps({"visualsearch_filter": {"field": "category", "value": category}})
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # deferred FK checks block DDL
        cursor.execute(
            f"CREATE INDEX test_half_hnsw ON {table} USING hnsw "
            "((embedding::halfvec(32)) halfvec_cosine_ops)"
        )
        cursor.execute(
            f"CREATE INDEX test_half_filter ON {table} USING hnsw "
            f"((embedding::halfvec(32)) halfvec_cosine_ops) WHERE category_id = {category}"
        )
        cursor.execute(f"COMMENT ON INDEX test_half_filter IS '{comment}'")
    other = build_tiny_clip(tmp_path / "clip16", projection_dim=16, image_size=32)
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "ENCODER_OPTIONS": {"model": str(other)}}
    out, _ = run("visualsearch_reindex", "--resize", "--no-progress")
    assert "Resized the vector column to 16" in out and "Done: 1 embedded" in out
    assert ProductImage.objects.get().embedding_status == "ready"
    make_product(color="blue", images=1)
    out, _ = run("visualsearch_reindex", "--no-progress")
    assert "Done: 1 embedded" in out and "0 failed" in out
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, pg_get_indexdef(oid), obj_description(oid, 'pg_class') FROM pg_class"
            " WHERE relname IN ('test_half_hnsw', 'test_half_filter') ORDER BY relname"
        )
        rows = cursor.fetchall()
    assert [row[0] for row in rows] == ["test_half_filter", "test_half_hnsw"]
    assert all("halfvec(16)" in row[1] for row in rows)
    assert rows[0][2] == comment


def test_bad_batch_size():
    with pytest.raises(CommandError, match="batch-size"):
        run("visualsearch_reindex", "--batch-size", "0")


def test_status_counts_by_status_and_model(make_product, broker):
    make_product(images=2)
    broken = make_product(image_bytes=b"junk")
    run("visualsearch_reindex", "--no-progress")
    make_product()
    out, _ = run("visualsearch_status")
    assert "Active encoder: clip:tiny-clip-32:" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert lines["ready"].split()[1] == "2" and "(active)" in lines["ready"]
    assert lines["failed"].split()[1] == "1"
    assert lines["pending"].split()[1] == "1"
    assert lines["total"].split()[1] == "4"
    assert EmbeddingStatus.STALE not in lines
    assert lines["backlog"].split()[1] == "0" and "queue 'celery'" in lines["backlog"]
    assert "Recent failures:" in out
    assert f"image {broken.images.get().pk} (" in out and "not an image format" in out
    out, _ = run("visualsearch_status", "--no-backlog", "--failures", "0")
    assert "backlog" not in out and "Recent failures" not in out


@pytest.mark.django_db(transaction=True)
def test_admin_reembed_action_enqueues_a_forced_batch(admin_client, make_product, broker):
    product = make_product(images=2)
    run("visualsearch_reindex", "--no-progress")
    broker.flushdb()
    pks = list(product.images.values_list("pk", flat=True))
    response = admin_client.post(
        "/admin/catalog/productimage/",
        {"action": "reembed_selected", "_selected_action": pks},
        follow=True,
    )
    assert "Enqueued 2 of 2 image(s)" in response.content.decode()
    (task,) = queued_tasks(broker)
    assert sorted(task["args"][2]) == sorted(pks) and task["args"][3] is True
    assert set(product.images.values_list("embedding_status", flat=True)) == {"pending"}
    listing = admin_client.get("/admin/catalog/productimage/?embedding_status__exact=pending")
    assert listing.status_code == 200 and "Pending" in listing.content.decode()


def test_demo_setup_generates_a_catalog_without_shared_data(monkeypatch, settings, tmp_path):
    from django.contrib.auth import get_user_model

    from shop.catalog.management.commands import demo_setup
    from shop.catalog.models import Product

    monkeypatch.setattr(demo_setup, "SHARED_CATALOG", tmp_path / "absent" / "products.csv")
    settings.BASE_DIR = tmp_path
    settings.DEBUG = True  # demo_setup refuses to run with DEBUG off (tests/api/test_security.py)
    out, _ = run("demo_setup")
    assert "generated a small one" in out
    assert Product.objects.count() == 24
    assert statuses() == ["ready"] * 24
    assert get_user_model().objects.filter(username="admin", is_superuser=True).exists()
    out, _ = run("demo_setup")  # a second run changes nothing
    assert "Catalog already has 24 products." in out and "0 image(s) to embed" in out
