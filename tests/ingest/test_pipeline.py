"""Upload → pending → task after commit → idempotent embedding, with real Postgres and Redis."""

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.db import transaction

from shop.catalog.models import ProductImage
from tests.conftest import make_image_bytes, queued_tasks
from visualsearch.ingest.pipeline import embed_images
from visualsearch.models import EmbeddingStatus


@pytest.mark.django_db(transaction=True)
def test_upload_enqueues_ids_after_commit_in_one_batch(broker, make_product):
    with transaction.atomic():
        product = make_product(images=3)
        assert queued_tasks(broker) == []  # nothing leaves before commit
    tasks = queued_tasks(broker)
    assert len(tasks) == 1
    assert tasks[0]["task"] == "visualsearch.embed_images"
    app_label, model_name, pks, force = tasks[0]["args"]
    assert (app_label, model_name, force) == ("catalog", "productimage", False)
    assert sorted(pks) == sorted(product.images.values_list("pk", flat=True))
    assert set(product.images.values_list("embedding_status", flat=True)) == {"pending"}


@pytest.mark.django_db(transaction=True)
def test_rolled_back_upload_enqueues_nothing(broker, make_product):
    with pytest.raises(RuntimeError), transaction.atomic():
        make_product()
        raise RuntimeError
    assert queued_tasks(broker) == []


@pytest.mark.django_db(transaction=True)
def test_only_a_changed_file_enqueues(broker, make_product):
    product = make_product()
    image = product.images.get()
    embed_images([image.pk])
    broker.flushdb()

    image = ProductImage.objects.get(pk=image.pk)
    image.alt_text = "new alt text"
    image.save()
    image.save(update_fields=["alt_text"])
    assert queued_tasks(broker) == []
    assert ProductImage.objects.get(pk=image.pk).embedding_status == EmbeddingStatus.READY

    image.image = ContentFile(make_image_bytes("green"), name="new.jpg")
    image.save()
    assert len(queued_tasks(broker)) == 1
    assert ProductImage.objects.get(pk=image.pk).embedding_status == EmbeddingStatus.PENDING


@pytest.mark.django_db(transaction=True)
def test_raw_saves_are_ignored(broker, make_product):
    product = make_product()
    image = product.images.get()
    broker.flushdb()
    from django.db.models.signals import post_save

    post_save.send(ProductImage, instance=image, created=True, raw=True, update_fields=None)
    assert queued_tasks(broker) == []


@pytest.mark.django_db
def test_embed_writes_vector_model_hash_and_status(make_product):
    product = make_product(images=2)
    pks = list(product.images.values_list("pk", flat=True))
    result = embed_images(pks)
    assert sorted(result.ready + result.reused) == sorted(pks)
    for row in ProductImage.objects.filter(pk__in=pks):
        vector = np.asarray(row.embedding)
        assert vector.shape == (32,)
        assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-3)
        assert row.embedding_status == EmbeddingStatus.READY
        assert row.embedding_error == ""
        assert row.embedded_at is not None


@pytest.mark.django_db
def test_vectors_are_stored_at_unit_length_whatever_the_encoder_returns(make_product, settings):
    """Exact scans rank by inner product, which equals cosine only for unit vectors."""
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "tests.encoders.UnnormalisedCLIPEncoder",
    }
    image = make_product().images.get()
    assert embed_images([image.pk]).ready == [image.pk]
    vector = np.asarray(ProductImage.objects.get(pk=image.pk).embedding)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.django_db
def test_embedding_is_idempotent(make_product):
    image = make_product().images.get()
    embed_images([image.pk])
    first = ProductImage.objects.get(pk=image.pk)
    result = embed_images([image.pk])
    assert result.skipped == [image.pk] and result.ready == []
    again = ProductImage.objects.get(pk=image.pk)
    assert again.embedded_at == first.embedded_at
    # force re-encodes: same vector, new timestamp
    forced = embed_images([image.pk], force=True)
    assert forced.ready == [image.pk]
    assert np.allclose(ProductImage.objects.get(pk=image.pk).embedding, first.embedding, atol=1e-5)


@pytest.mark.django_db
def test_same_content_is_encoded_once(make_product):
    data = make_image_bytes("purple", "circle")
    first = make_product(image_bytes=data).images.get()
    embed_images([first.pk])
    second = make_product(image_bytes=data).images.get()
    result = embed_images([second.pk])
    assert result.reused == [second.pk]
    stored = ProductImage.objects.get(pk=first.pk).embedding
    assert np.allclose(ProductImage.objects.get(pk=second.pk).embedding, stored)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01 definitely not an image" * 10, "not an image format"),
        (make_image_bytes()[:300], "could not be decoded"),
        (b"<html><body>hello</body></html>", "not an image format"),
    ],
)
def test_undecodable_file_fails_with_reason(make_product, data, reason):
    image = make_product(image_bytes=data).images.get()
    result = embed_images([image.pk])
    row = ProductImage.objects.get(pk=image.pk)
    assert row.embedding_status == EmbeddingStatus.FAILED
    assert reason in row.embedding_error
    assert result.failed == {image.pk: row.embedding_error}
    assert row.embedding is None


@pytest.mark.django_db
def test_missing_file_fails_with_reason(make_product):
    image = make_product().images.get()
    image.image.storage.delete(image.image.name)
    embed_images([image.pk])
    row = ProductImage.objects.get(pk=image.pk)
    assert row.embedding_status == EmbeddingStatus.FAILED
    assert "missing" in row.embedding_error


@pytest.mark.django_db
def test_deleted_rows_are_reported_not_raised(make_product):
    image = make_product().images.get()
    pk = image.pk
    image.delete()
    assert embed_images([pk]).missing == [pk]


@pytest.mark.django_db
def test_a_file_replaced_meanwhile_is_not_overwritten(make_product):
    image = make_product().images.get()
    # Another save replaced the file after this task read the row: simulate by renaming
    # the stored name under the task's feet (the task's UPDATE matches on the old name).
    ProductImage.objects.filter(pk=image.pk).update(image="products/other.jpg")
    from visualsearch.ingest.pipeline import _write

    assert _write(ProductImage, image.pk, image.image.name, np.ones(32), "x" * 64, "m") is False
    assert ProductImage.objects.get(pk=image.pk).embedding is None


@pytest.mark.django_db
def test_task_records_a_vector_the_database_refuses_as_failed(make_product, settings, tmp_path):
    from tests.tiny_clip import build_tiny_clip
    from visualsearch.ingest.tasks import embed_images_task

    image = make_product().images.get()
    other = build_tiny_clip(tmp_path / "clip16", projection_dim=16, image_size=32)
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "ENCODER_OPTIONS": {"model": str(other)}}
    result = embed_images_task.apply(args=("catalog", "productimage", [image.pk])).get()
    assert "1 failed" in result
    row = ProductImage.objects.get(pk=image.pk)
    assert row.embedding_status == EmbeddingStatus.FAILED
    assert "expected 32 dimensions, not 16" in row.embedding_error


@pytest.mark.django_db(transaction=True)
def test_rolled_back_savepoint_drops_its_rows_from_the_batch(broker, make_product):
    with transaction.atomic():
        kept = make_product()
        try:
            with transaction.atomic():
                make_product()
                raise RuntimeError
        except RuntimeError:
            pass
        kept_too = make_product()
    (task,) = queued_tasks(broker)
    expected = [kept.images.get().pk, kept_too.images.get().pk]
    assert sorted(task["args"][2]) == sorted(expected)


@pytest.mark.django_db(transaction=True)
def test_deferred_embedding_marks_pending_without_enqueueing(broker, make_product):
    from visualsearch.ingest.handlers import deferred_embedding

    with deferred_embedding():
        product = make_product(images=2)
    assert queued_tasks(broker) == []
    assert set(product.images.values_list("embedding_status", flat=True)) == {"pending"}
    make_product()
    assert len(queued_tasks(broker)) == 1  # back to normal after the block


@pytest.mark.django_db
def test_transient_storage_error_is_retried_then_left_pending(make_product, settings, caplog):
    import os

    from visualsearch.ingest.tasks import embed_images_task

    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "TASK_MAX_RETRIES": 2}
    image = make_product().images.get()
    path = image.image.path
    os.replace(path, path + ".away")
    os.mkdir(path)  # reading a directory raises IsADirectoryError: an OSError, retried
    try:
        outcome = embed_images_task.apply(args=("catalog", "productimage", [image.pk]))
        assert isinstance(outcome.result, IsADirectoryError)
        assert outcome.state == "FAILURE"
        retries = [r for r in caplog.records if "transient error" in r.getMessage()]
        assert [r.getMessage().split(" retry in ")[1].split("s:")[0] for r in retries] == [
            "2",
            "4",
        ]  # exponential backoff, then it gives up after the second retry
        assert "giving up" in caplog.text
    finally:
        os.rmdir(path)
        os.replace(path + ".away", path)
    row = ProductImage.objects.get(pk=image.pk)
    assert row.embedding_status == EmbeddingStatus.PENDING  # not failed: the sweep retries it
    assert (
        "1 embedded" in embed_images_task.apply(args=("catalog", "productimage", [image.pk])).get()
    )


def test_pgvector_version_comparison():
    from visualsearch.checks import MIN_PGVECTOR, _version

    assert _version("0.8.3") < MIN_PGVECTOR <= _version("0.8.4") < _version("0.10.0")


@pytest.mark.django_db(transaction=True)
def test_sweep_re_enqueues_old_pending_and_stale_rows(broker, make_product):
    from datetime import timedelta

    from django.utils import timezone

    from visualsearch.ingest.tasks import sweep_pending

    old, recent, stale = (make_product().images.get() for _ in range(3))
    ProductImage.objects.filter(pk=old.pk).update(
        embedding_updated_at=timezone.now() - timedelta(hours=1),
        embedding_queued_at=timezone.now() - timedelta(hours=1),  # its task is long gone
    )
    ProductImage.objects.filter(pk=stale.pk).update(
        embedding_status=EmbeddingStatus.STALE, embedding_updated_at=timezone.now()
    )  # stale after its task was sent (an encoder change)
    broker.flushdb()
    assert sweep_pending() == 2
    (task,) = queued_tasks(broker)
    assert sorted(task["args"][2]) == sorted([old.pk, stale.pk])
    assert recent.pk not in task["args"][2]
