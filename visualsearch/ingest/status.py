"""Embedding status for operators: counts by status and encoder model, failures, queue backlog.

Shared by the admin overview and ``manage.py visualsearch_status``. Asking the broker for the
backlog is bounded by a short timeout and never raises: an unreachable broker reads as
``None`` ("unknown").
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from visualsearch.conf import visualsearch_settings
from visualsearch.models import EmbeddingQuerySet, EmbeddingStatus
from visualsearch.storage.layout import image_storage

logger = logging.getLogger(__name__)

#: Seconds to wait for the broker before reporting the backlog as unknown.
BACKLOG_TIMEOUT = 2.0


@dataclass
class ModelCounts:
    """Image rows of one encoder model (``""``: never embedded), by status."""

    model_id: str
    active: bool
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class EmbeddingReport:
    """How far embedding has got, for one image model."""

    encoder_model: str
    dimensions: int
    by_status: dict[str, int]  # every EmbeddingStatus value, in declaration order
    by_model: list[ModelCounts]
    rows: list[dict[str, Any]]  # EmbeddingQuerySet.counts_by_status()
    failures: list = field(default_factory=list)  # most recently failed image rows
    switch: Any = None  # visualsearch.ingest.switch.Progress while an encoder switch builds

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def embedding_report(model: type | None = None, *, failures: int = 5) -> EmbeddingReport:
    """Counts of ``model``'s image rows (default: the configured one) by status and model.

    ``failures`` most recently failed rows come along, with their reasons.
    """
    from visualsearch.encoders.serving import serving_encoder
    from visualsearch.ingest import switch

    model = model or image_storage().model
    encoder = serving_encoder(model.objects.db)
    rows = EmbeddingQuerySet(model).counts_by_status()
    by_status = {status.value: 0 for status in EmbeddingStatus}
    by_model: dict[str, ModelCounts] = {}
    for row in rows:
        status, model_id = row["embedding_status"], row["embedding_model"]
        by_status[status] = by_status.get(status, 0) + row["count"]
        entry = by_model.setdefault(
            model_id,
            ModelCounts(model_id, model_id == encoder.model_id, dict.fromkeys(by_status, 0)),
        )
        entry.counts[status] = entry.counts.get(status, 0) + row["count"]
    ordered = sorted(by_model.values(), key=lambda m: (not m.active, m.model_id == "", m.model_id))
    return EmbeddingReport(
        encoder_model=encoder.model_id,
        dimensions=encoder.dimensions,
        by_status=by_status,
        by_model=ordered,
        rows=rows,
        failures=recent_failures(model, failures) if by_status[EmbeddingStatus.FAILED] else [],
        switch=switch.progress(),
    )


def recent_failures(model: type | None = None, limit: int = 5) -> list:
    """The ``limit`` most recently failed image rows, their product selected along."""
    if limit < 1:
        return []
    storage = image_storage()
    model = model or storage.model
    product = storage.product if model is storage.model else visualsearch_settings.PRODUCT_FIELD
    return list(
        model._default_manager.filter(embedding_status=EmbeddingStatus.FAILED)
        .select_related(product)
        .order_by("-embedding_updated_at", "-pk")[:limit]
    )


def queue_name(app: Any = None) -> str:
    """The Celery queue embedding tasks go to: the ``QUEUE`` setting, else the default queue."""
    if visualsearch_settings.QUEUE:
        return visualsearch_settings.QUEUE
    return _celery_app(app).conf.task_default_queue


def queue_backlog(
    queue: str | None = None,
    *,
    broker_url: str | None = None,
    timeout: float = BACKLOG_TIMEOUT,
    app: Any = None,
) -> int | None:
    """Messages waiting in ``queue`` (default: :func:`queue_name`), or ``None`` if unknown.

    Asks the broker of the Celery ``app`` (default: the current one), or ``broker_url``, with
    a passive queue declaration. Connecting and asking are bounded by ``timeout`` seconds;
    an unreachable broker, or one that cannot count, gives ``None`` rather than an error.
    A queue the broker does not know (Redis drops empty lists) has 0 messages.
    """
    try:
        app = _celery_app(app)
        queue = queue or queue_name(app)
    except Exception as exc:
        logger.warning("visualsearch: no Celery app to ask for the backlog: %s", exc)
        return None
    # The socket timeouts bound each step; the thread bounds the whole, whatever the transport.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visualsearch-backlog")
    try:
        future = pool.submit(_message_count, app, queue, broker_url, timeout)
        return future.result(timeout=timeout * 2 + 1)
    except FutureTimeout:
        logger.warning("visualsearch: the broker did not answer within %ss", timeout)
        return None
    except Exception as exc:  # kombu and its transports raise many types
        logger.warning("visualsearch: could not read the queue backlog: %s", exc)
        return None
    finally:
        pool.shutdown(wait=False)


def _message_count(app: Any, queue: str, broker_url: str | None, timeout: float) -> int:
    options = {
        "max_retries": 0,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "read_timeout": timeout,
        "write_timeout": timeout,
    }
    with app.connection_for_read(
        url=broker_url, connect_timeout=timeout, transport_options=options
    ) as connection:
        connection.ensure_connection(max_retries=0, timeout=timeout)
        try:
            declared = connection.default_channel.queue_declare(queue=queue, passive=True)
        except Exception as exc:  # kombu's ChannelError, py-amqp's NotFound
            if str(getattr(exc, "code", "")) == "404" or "NOT_FOUND" in str(exc):
                return 0
            raise
        return int(declared.message_count)


def _celery_app(app: Any = None) -> Any:
    if app is not None:
        return app
    from celery import current_app

    return current_app._get_current_object()
