"""Signal handlers: a changed image file marks the row pending and enqueues it after commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import router, transaction
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.models import EmbeddingStatus

_ORIGINAL = "_visualsearch_original_file"
_deferred = threading.local()


@contextmanager
def deferred_embedding() -> Iterator[None]:
    """Inside this block changed images are marked ``pending`` but not enqueued, and product
    texts are left alone.

    For bulk imports: run ``manage.py visualsearch_reindex`` afterwards (inline, in large
    batches), or leave the rows to the periodic sweep. Nests; applies to this thread only.
    """
    _deferred.depth = getattr(_deferred, "depth", 0) + 1
    try:
        yield
    finally:
        _deferred.depth -= 1


def remember_file(sender: type, instance: Any, **kwargs: Any) -> None:
    """``post_init``: remember the file the row was loaded with (its name and field file)."""
    setattr(instance, _ORIGINAL, (_file_name(instance), _field_file(instance)))


def image_saved(
    sender: type, instance: Any, created: bool, raw: bool, update_fields: Any, **kwargs: Any
) -> None:
    """``post_save``: when the image file really changed, mark the row pending and enqueue it."""
    field = visualsearch_settings.IMAGE_FIELD
    if raw or (update_fields is not None and field not in update_fields):
        return
    # A file saved again under its old name (storages that overwrite, such as S3 with
    # AWS_S3_FILE_OVERWRITE) replaces the field's file: compare that, not only the name. The
    # worker then compares content hashes, so a file written with the same bytes costs no
    # encoding.
    replaced = _field_file(instance)
    name = _file_name(instance)
    original_name, original_file = getattr(instance, _ORIGINAL, (None, None))
    if not created and original_name is not None and name == original_name:
        if replaced is original_file:
            return
    setattr(instance, _ORIGINAL, (name, _field_file(instance)))
    from visualsearch.storage.layout import image_storage

    storage = image_storage()
    # A new row of an EmbeddedImage model is pending already (the field defaults); one in
    # visualsearch's table is created here, in the saving transaction.
    storage.mark_pending([instance.pk], created=created)
    if not storage.separate and not created:
        instance.embedding_status = EmbeddingStatus.PENDING
        instance.embedding_error = ""
        instance.embedding_updated_at = timezone.now()
        instance.embedding_attempts = 0
    schedule(sender, instance.pk)


def product_saved(
    sender: type, instance: Any, raw: bool, update_fields: Any, **kwargs: Any
) -> None:
    """``post_save`` of products: re-index the product's words for text search.

    Does nothing unless ``TEXT_MODEL`` is set, on ``raw`` saves, inside
    :func:`deferred_embedding` (the reindex command or the sweep catch up), and when
    ``update_fields`` leaves out every field that ``TEXT_FIELDS`` read. The full-text vector
    is written now, in the saving transaction; a product whose words changed is embedded
    after commit.
    """
    if raw or not visualsearch_settings.TEXT_MODEL or getattr(_deferred, "depth", 0):
        return
    from visualsearch.ingest.texts import local_fields, sync_texts
    from visualsearch.storage.lookup import get_text_model

    if update_fields is not None and not local_fields() & set(update_fields):
        return
    model = get_text_model()
    for pk in sync_texts([instance.pk]):
        schedule(model, pk)


def image_deleted(sender: type, instance: Any, **kwargs: Any) -> None:
    """``post_delete`` of images: with ``FUSION`` on, the product's fused vector loses that
    image; it is marked ``pending`` now and rebuilt after commit."""
    if visualsearch_settings.FUSION is None:
        return
    from visualsearch.ingest.fusion import mark_pending

    product = getattr(instance, visualsearch_settings.PRODUCT_FIELD + "_id", None)
    pks = mark_pending([product]) if product is not None else []
    if pks and not getattr(_deferred, "depth", 0):
        from visualsearch.ingest.tasks import enqueue_fused

        transaction.on_commit(
            lambda: enqueue_fused(pks), using=router.db_for_write(sender), robust=True
        )


def schedule(model: type, pk: Any) -> None:
    """Enqueue ``pk`` once the current transaction commits, in one batch with its other saves.

    Nothing is sent for a transaction (or savepoint) that rolls back: Django drops its
    ``on_commit`` callbacks, and with them the batch.
    """
    if getattr(_deferred, "depth", 0):
        return
    using = router.db_for_write(model)
    connection = transaction.get_connection(using)
    # One batch per savepoint level, so that a rolled-back savepoint takes its rows with it.
    # A batch is live while its callback waits in the transaction's on_commit list.
    waiting = {id(entry[1]) for entry in connection.run_on_commit}
    batches = {
        key: batch
        for key, batch in getattr(connection, "_visualsearch_batches", {}).items()
        if id(batch) in waiting
    }
    key = tuple(connection.savepoint_ids)
    batch = batches.get(key)
    if batch is None:
        batch = batches[key] = _Batch()
        batch.add(model, pk)
        transaction.on_commit(batch, using=using, robust=True)
    else:
        batch.add(model, pk)
    connection._visualsearch_batches = batches


class _Batch:
    """The rows saved in one transaction; called on commit to enqueue them."""

    def __init__(self) -> None:
        self.rows: dict[type, list] = {}

    def add(self, model: type, pk: Any) -> None:
        self.rows.setdefault(model, []).append(pk)

    def __call__(self) -> None:
        from visualsearch.ingest.tasks import enqueue

        rows, self.rows = self.rows, {}
        for model, pks in rows.items():
            enqueue(model, list(dict.fromkeys(pks)))


def invalidate_renderings(sender: type, instance: Any, **kwargs: Any) -> None:
    """``post_save``/``post_delete`` of images and products: drop cached widgets on commit."""
    from visualsearch.web import cache

    if kwargs.get("raw"):
        return
    cache.invalidate(using=kwargs.get("using"))


def _field_file(instance: Any) -> Any:
    """What the image field holds now (Django replaces it when a new file is saved)."""
    return instance.__dict__.get(visualsearch_settings.IMAGE_FIELD)


def _file_name(instance: Any) -> str | None:
    """The image file's name, or None when the field was deferred (unknown without a query)."""
    field = visualsearch_settings.IMAGE_FIELD
    if field not in instance.__dict__:
        return None
    fieldfile = getattr(instance, field)
    return (fieldfile.name or "") if fieldfile is not None else ""
