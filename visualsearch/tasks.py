"""Celery tasks. Messages carry ids only: ``(app_label, model_name, [pk, …])``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta

from celery import shared_task
from celery.signals import worker_process_init
from django.apps import apps
from django.db import DataError, InterfaceError, OperationalError
from django.db.models import Q
from django.utils import timezone

from visualsearch.conf import get_image_model, visualsearch_settings
from visualsearch.models import EmbeddingStatus

logger = logging.getLogger(__name__)

#: Errors worth another try: the database or the file storage was briefly unavailable.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError)


@shared_task(bind=True, name="visualsearch.embed_images", acks_late=True, ignore_result=True)
def embed_images_task(self, app_label: str, model_name: str, pks: list, force: bool = False) -> str:
    """Embed the given image rows; retry transient failures with exponential backoff."""
    from visualsearch.pipeline import embed_images, mark_failed

    model = apps.get_model(app_label, model_name)
    try:
        return str(embed_images(pks, model=model, force=force))
    except DataError as exc:  # the database refuses the vector: retrying cannot help
        mark_failed(model, pks, f"The database rejected the vector: {exc}".strip())
        return f"{len(pks)} failed: {exc}"
    except TRANSIENT_ERRORS as exc:
        max_retries = visualsearch_settings.TASK_MAX_RETRIES
        if self.request.retries >= max_retries:
            logger.error("visualsearch: giving up on %s, rows stay pending: %s", pks, exc)
            raise
        countdown = min(
            2 ** (self.request.retries + 1), visualsearch_settings.TASK_RETRY_BACKOFF_MAX
        )
        logger.warning("visualsearch: transient error on %s, retry in %ss: %s", pks, countdown, exc)
        raise self.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc


@shared_task(name="visualsearch.sweep_pending", ignore_result=True)
def sweep_pending() -> int:
    """Re-enqueue rows left ``pending`` (broker was down, task lost) and ``stale`` rows."""
    from visualsearch.pipeline import mark_stale

    model = get_image_model()
    mark_stale(model)
    cutoff = timezone.now() - timedelta(seconds=visualsearch_settings.SWEEP_PENDING_AFTER)
    pks = list(
        model._base_manager.filter(
            Q(embedding_status=EmbeddingStatus.PENDING, embedding_updated_at__lt=cutoff)
            | Q(embedding_status=EmbeddingStatus.STALE)
        )
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return enqueue(model, pks)


def enqueue(
    model: type, pks: Iterable, *, force: bool = False, batch_size: int | None = None
) -> int:
    """Send embedding tasks for ``pks`` in batches; returns how many rows were enqueued.

    A broker that cannot be reached is logged, not raised: the rows stay ``pending`` and the
    sweep (or ``visualsearch_reindex``) picks them up later, so a page save never fails on it.
    """
    batch_size = batch_size or visualsearch_settings.BATCH_SIZE
    pks = list(pks)
    sent = 0
    for start in range(0, len(pks), batch_size):
        batch: Sequence = pks[start : start + batch_size]
        try:
            embed_images_task.apply_async(
                args=(model._meta.app_label, model._meta.model_name, list(batch), force),
                queue=visualsearch_settings.QUEUE,
            )
        except Exception as exc:  # kombu raises several types when the broker is down
            logger.error(
                "visualsearch: could not enqueue %d image(s), they stay pending: %s",
                len(pks) - start,
                exc,
            )
            break
        sent += len(batch)
    return sent


@worker_process_init.connect(dispatch_uid="visualsearch.warm_up")
def warm_up_encoder(**kwargs: object) -> None:
    """Load the encoder in each new worker process (after the fork, never before it)."""
    from visualsearch.encoders import get_encoder

    if not visualsearch_settings.WARM_UP_WORKERS:
        return
    try:
        encoder = get_encoder()
        encoder.warm_up()
        logger.info("visualsearch: %r loaded", encoder)
    except Exception:  # a broken model must not stop the worker; tasks will report it
        logger.exception("visualsearch: could not load the encoder")
