"""Celery tasks. Messages carry ids only: ``(app_label, model_name, [pk, …])``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import timedelta

from celery import shared_task
from celery.signals import worker_process_init
from django.apps import apps
from django.db import DataError, InterfaceError, OperationalError
from django.db.models import Q
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_text_model

logger = logging.getLogger(__name__)

#: Errors worth another try: the database or the file storage was briefly unavailable.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError)


@shared_task(bind=True, name="visualsearch.embed_images", acks_late=True, ignore_result=True)
def embed_images_task(self, app_label: str, model_name: str, pks: list, force: bool = False) -> str:
    """Embed the given image rows; retry transient failures with exponential backoff."""
    from visualsearch.ingest.pipeline import embed_images

    return _run(self, embed_images, app_label, model_name, pks, force)


@shared_task(bind=True, name="visualsearch.embed_texts", acks_late=True, ignore_result=True)
def embed_texts_task(self, app_label: str, model_name: str, pks: list, force: bool = False) -> str:
    """Embed the given product-text rows; retries like :func:`embed_images_task`."""
    from visualsearch.ingest.texts import embed_texts

    return _run(self, embed_texts, app_label, model_name, pks, force)


def _run(task, embed, app_label: str, model_name: str, pks: list, force: bool) -> str:
    """Run ``embed`` on the rows; record refused vectors, retry transient errors with backoff."""
    from visualsearch.ingest.pipeline import mark_failed

    model = apps.get_model(app_label, model_name)
    try:
        return str(embed(pks, model=model, force=force))
    except DataError as exc:  # the database refuses the vector: retrying cannot help
        mark_failed(model, pks, f"The database rejected the vector: {exc}".strip())
        return f"{len(pks)} failed: {exc}"
    except TRANSIENT_ERRORS as exc:
        max_retries = visualsearch_settings.TASK_MAX_RETRIES
        if task.request.retries >= max_retries:
            logger.error("visualsearch: giving up on %s, rows stay pending: %s", pks, exc)
            raise
        countdown = min(
            2 ** (task.request.retries + 1), visualsearch_settings.TASK_RETRY_BACKOFF_MAX
        )
        logger.warning("visualsearch: transient error on %s, retry in %ss: %s", pks, countdown, exc)
        raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc


@shared_task(name="visualsearch.sweep_pending", ignore_result=True)
def sweep_pending() -> int:
    """Re-enqueue rows left ``pending`` (broker was down, task lost) and ``stale`` rows.

    Covers the images (those written in bulk get their row in visualsearch's table here,
    those whose file was replaced without a signal are re-embedded) and, when text search is
    on, the product-text model; image rows without their copies of product fields
    (``IMAGE_FILTER_FIELDS``) get them first.
    """
    from visualsearch.ingest.pipeline import mark_stale
    from visualsearch.ingest.texts import mark_stale_texts, products_without_text, sync_texts
    from visualsearch.storage.copies import sync_copies

    storage = image_storage()
    sync_copies(missing_only=True)  # images written by bulk_create
    added = storage.add_missing()  # images without a row in visualsearch's table
    replaced = storage.mark_replaced()  # files replaced by QuerySet.update
    mark_stale(storage.model)
    sent = enqueue(storage.image_model, added + replaced + _left_over(storage.model))
    text_model = get_text_model()
    if text_model is not None:
        mark_stale_texts()
        missing = products_without_text()  # saved inside deferred_embedding()
        new = []
        for start in range(0, len(missing), 1000):
            new += sync_texts(missing[start : start + 1000])
        sent += enqueue(text_model, new + _left_over(text_model))
    return sent


def _left_over(model: type) -> list:
    cutoff = timezone.now() - timedelta(seconds=visualsearch_settings.SWEEP_PENDING_AFTER)
    return list(
        model._base_manager.filter(
            Q(embedding_status=EmbeddingStatus.PENDING, embedding_updated_at__lt=cutoff)
            | Q(embedding_status=EmbeddingStatus.STALE)
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def enqueue(
    model: type, pks: Iterable, *, force: bool = False, batch_size: int | None = None
) -> int:
    """Send embedding tasks for ``pks`` in batches; returns how many rows were enqueued.

    A broker that cannot be reached is logged, not raised: the rows stay ``pending`` and the
    sweep (or ``visualsearch_reindex``) picks them up later, so a page save never fails on it.
    """
    from visualsearch.models import EmbeddedText

    batch_size = batch_size or visualsearch_settings.BATCH_SIZE
    task = embed_texts_task if issubclass(model, EmbeddedText) else embed_images_task
    pks = list(pks)
    sent = 0
    for start in range(0, len(pks), batch_size):
        batch: Sequence = pks[start : start + batch_size]
        try:
            task.apply_async(
                args=(model._meta.app_label, model._meta.model_name, list(batch), force),
                queue=visualsearch_settings.QUEUE,
            )
        except Exception as exc:  # kombu raises several types when the broker is down
            logger.error(
                "visualsearch: could not enqueue %d row(s), they stay pending: %s",
                len(pks) - start,
                exc,
            )
            break
        sent += len(batch)
    return sent


@worker_process_init.connect(dispatch_uid="visualsearch.warm_up")
def start_warm_up(**kwargs: object) -> None:
    """Load the encoder in each new worker process (after the fork, never before it), in a
    thread of that process.

    Celery kills a pool process that has not reported for work ``worker_proc_alive_timeout``
    (4 s) after it started, and starts another: loading torch and a model inside this signal
    took longer, so a pool process that died (killed, out of memory) was replaced over and
    over and the worker never took a task again. A task that arrives during the load waits
    for it (encoders load under a lock).
    """
    if not visualsearch_settings.WARM_UP_WORKERS:
        return
    from visualsearch.encoders import get_encoder

    try:
        get_encoder()  # built here (no weights), so that tasks share the one warmed up
    except Exception:  # reported by warm_up_encoder and by the tasks
        pass
    threading.Thread(target=warm_up_encoder, name="visualsearch-warm-up", daemon=True).start()


def warm_up_encoder(**kwargs: object) -> None:
    """Load the encoders now rather than on the first task (logs what it loaded)."""
    from visualsearch.encoders import get_encoder

    if not visualsearch_settings.WARM_UP_WORKERS:
        return
    try:
        encoder = get_encoder()
        encoder.warm_up()
        logger.info("visualsearch: %r loaded", encoder)
    except Exception:  # a broken model must not stop the worker; tasks will report it
        logger.exception("visualsearch: could not load the encoder")
    if visualsearch_settings.TEXT_MODEL:
        from visualsearch.encoders import get_text_encoder

        try:
            text_encoder = get_text_encoder()
            text_encoder.warm_up()
            logger.info("visualsearch: %r loaded", text_encoder)
        except Exception:
            logger.exception("visualsearch: could not load the text encoder")
