"""Images through the one embedding loop (:mod:`visualsearch.ingest.loop`): re-read rows,
open files through storage, decode, encode with the serving generation's encoder, write.

Used by the Celery tasks, the reindex command (inline) and anything else that embeds. While
a new encoder generation is building (:mod:`visualsearch.ingest.switch`), the same images are
also embedded for it (:mod:`visualsearch.ingest.generation`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from django.db import DatabaseError, connections, router
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder, serving
from visualsearch.encoders.base import l2_normalize
from visualsearch.encoders.serving import serving_encoder
from visualsearch.ingest import features, generation
from visualsearch.ingest.images import InvalidImage, decode_stored, read_stored
from visualsearch.ingest.loop import EmbedResult, Item, Strategy, content_hash, embed
from visualsearch.models import EmbeddingStatus, EncodedVector, EncoderGeneration
from visualsearch.storage import statements
from visualsearch.storage.layout import ImageStorage, image_storage
from visualsearch.web import cache

__all__ = [
    "EmbedResult",
    "GenerationStrategy",
    "ImageStrategy",
    "build_generation",
    "embed_images",
    "mark_failed",
    "mark_stale",
]

logger = logging.getLogger(__name__)


class ImageStrategy(Strategy):
    """Images: files opened through Django storage, decoded safely, bounded for the encoder,
    encoded with the serving generation's encoder (``encoder``: a snapshot for the batch)."""

    noun = "image"

    def __init__(self, storage: ImageStorage, encoder: Any = None) -> None:
        self.storage, self.model = storage, storage.model
        if encoder is None:  # a fresh reading per batch: a switch may have started seconds ago
            serving.refresh(storage.model.objects.db)
            encoder = serving_encoder(storage.model.objects.db)
        self.encoder = encoder.snapshot()

    def read(self, pks: list, result: EmbedResult) -> list[Item]:
        storage = self.storage
        _add_missing_rows(storage, pks)
        rows = {row.pk: row for row in storage.with_images(storage.rows.filter(pk__in=pks))}
        result.missing = [pk for pk in pks if pk not in rows]
        items = []
        for row in rows.values():
            fieldfile = getattr(storage.image_of(row), visualsearch_settings.IMAGE_FIELD)
            item = Item(row.pk, fieldfile.name if fieldfile else "", "")
            try:
                data = read_stored(fieldfile)
            except InvalidImage as exc:
                self.fail(item, str(exc), result)
                continue
            item.digest = content_hash(data)
            item.stored, item.stored_model = row.embedding, row.embedding_model
            item.status, item.has_vector = row.embedding_status, row.embedding is not None
            item.payload, item.stored_hash = data, row.embedding_hash
            items.append(item)
        features.attach(self.encoder, items)
        return items

    def prepare(self, item: Item) -> Any:
        return decode_stored(item.payload)  # a batch holds BATCH_SIZE images of ≤ 1024 px

    def hold(self, digests: set[str]) -> Any:
        return content_locks(router.db_for_write(self.model), digests)

    def derive(self, item: Item) -> Any:
        if item.digest == item.stored_hash and item.has_vector:
            derived = self.encoder.derive(item.stored, item.stored_model)
            if derived is not None:
                return derived
        return features.derive(self.encoder, item)

    def encode(self, items: list[Item]) -> Any:
        return features.encode(self.encoder, items)

    def write(self, item: Item, vector: Any) -> bool:
        vector = item.stored if vector is None else vector
        return _write(self.model, item.pk, item.guard, vector, item.digest, self.encoder.model_id)

    def fail(self, item: Item, reason: str, result: EmbedResult) -> None:
        _mark_failed(self.model, item.pk, item.guard, reason, result)

    def finished(self, result: EmbedResult) -> None:
        if result.changed:
            cache.invalidate()
        super().finished(result)


class GenerationStrategy(ImageStrategy):
    """Images embedded for a building encoder generation: the vector of each content goes to
    :class:`~visualsearch.models.EncodedVector` under the generation's model id; the serving
    rows stay as they are. Stored base features or vectors are derived, not encoded."""

    def __init__(self, storage: ImageStorage, encoder: Any, building: EncoderGeneration) -> None:
        super().__init__(storage, encoder)
        self.model, self.building = EncodedVector, building

    def read(self, pks: list, result: EmbedResult) -> list[Item]:
        items = super().read(pks, result)
        model_id = self.encoder.model_id
        done = features.lookup(model_id, (item.digest for item in items))
        for item in [item for item in items if item.digest in done]:  # the loop skips these
            item.stored_hash, item.stored_model, item.has_vector = item.digest, model_id, True
            item.status = EmbeddingStatus.READY
        return items

    def known(self, digests: set[str]) -> dict[str, Any]:
        return features.lookup(self.encoder.model_id, digests)

    def write(self, item: Item, vector: Any) -> bool:
        if vector is not None:
            features.store(self.encoder.model_id, [item.digest], l2_normalize([vector]))
        return True

    def fail(self, item: Item, reason: str, result: EmbedResult) -> None:
        logger.warning("visualsearch: image %s failed for %s: %s", item.pk, self.encoder, reason)
        result.failed[item.pk] = reason
        if item.digest:
            generation.note_failure(self.building.pk, item.digest, reason)

    def finished(self, result: EmbedResult) -> None:
        Strategy.finished(self, result)  # nothing served changed


def build_generation(pks: list, encoder: Any, building: EncoderGeneration) -> EmbedResult:
    """Embed the images ``pks`` for the ``building`` generation (``encoder`` is its)."""
    return embed(GenerationStrategy(image_storage(), encoder, building), pks)


@contextmanager
def content_locks(using: str, digests: set[str]) -> Iterator[None]:
    """One advisory lock per content hash (SHA-256, first 64 bits), taken in ascending order
    so that two batches sharing contents cannot deadlock: a worker given content another one
    is encoding waits for it, then reuses its vector. Session locks, released at the end,
    outside any transaction: they hold no row, so saves never wait for them (inside a
    caller's transaction, transaction locks)."""
    keys = sorted(
        int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True) for digest in digests
    )
    connection = connections[using]
    scope = "_xact" if connection.in_atomic_block else ""
    with connection.cursor() as cursor:
        for key in keys:
            cursor.execute(f"SELECT pg_advisory{scope}_lock(%s)", [key])
    try:
        yield
    finally:
        if not scope:
            try:
                with connection.cursor() as cursor:
                    for key in keys:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except DatabaseError:  # the connection is gone, and its locks with it
                pass


def embed_images(pks: Iterable, *, model: type | None = None, force: bool = False) -> EmbedResult:
    """Embed the images ``pks`` of the configured image model (``model``, when given, must
    be that model or its vector model: tasks name it).

    Permanent problems (no file, missing file, undecodable data) mark the row ``failed`` with
    a reason. Transient ones (storage or database errors) raise, for the caller to retry.
    A row whose file was replaced while we worked is left to the task its save enqueued.
    While another encoder generation builds (:mod:`visualsearch.ingest.switch`), the images
    are embedded for it too, so that it covers what was saved during the switch.
    """
    storage = image_storage()
    if model is not None and model not in (storage.model, storage.image_model):
        raise ValueError(f"{model._meta.label} is not the configured image model.")
    pks = list(pks)
    strategy = ImageStrategy(storage)
    result = embed(strategy, pks, force=force)
    configured = get_encoder()
    if not serving.recorded(storage.model.objects.db):
        generation.ensure_recorded(strategy.encoder)  # the encoder these vectors came from
    started = generation.building()
    if started is not None and started.model_id == configured.model_id != strategy.encoder.model_id:
        build_generation(pks, configured, started)
    return result


def _add_missing_rows(storage: ImageStorage, pks: list) -> None:
    """Give the images among ``pks`` that have no vector row in visualsearch's table a
    ``pending`` one (images saved in bulk, or sent by ``visualsearch_reindex``)."""
    if not storage.separate:
        return
    have = set(storage.rows.filter(pk__in=pks).values_list("pk", flat=True))
    if len(have) < len(pks):
        images = storage.image_model._base_manager.filter(
            pk__in=[pk for pk in pks if pk not in have]
        ).values_list("pk", flat=True)
        storage.rows.bulk_create([storage.model(pk=pk) for pk in images], ignore_conflicts=True)


def _write(model: type, pk, name: str, vector, digest: str, model_id: str) -> bool:
    """Store a vector, unless the row's file changed meanwhile. True when a row was updated.

    The vector is stored at unit length whatever the encoder returned: exact scans rank by
    inner product (``visualsearch.query.knn._distance``).

    The vector goes to Postgres as a binary parameter (pgvector's binary format) on the
    same connection and transaction as the ORM: Django binds parameters as text, and
    formatting then parsing 1,280 floats cost more than the UPDATE itself
    (``bench/write_bench.py``, docs/performance.md).
    """
    connection = connections[router.db_for_write(model)]
    statements.vector_parameters(connection)
    raw = connection.connection
    quote = connection.ops.quote_name
    image_model = image_storage().image_model
    image_column = quote(image_model._meta.get_field(visualsearch_settings.IMAGE_FIELD).column)
    if image_model is not model:  # visualsearch's table: the file is on the image row
        image_pk = quote(image_model._meta.pk.column)
        still = (
            f"EXISTS (SELECT 1 FROM {quote(image_model._meta.db_table)} AS i "
            f"WHERE i.{image_pk} = %s AND i.{image_column} = %s)"
        )
        check = [pk, name]
        source, source_value = ", embedded_file = %s", [name]
    else:
        still, check = f"{image_column} = %s", [name]
        source, source_value = "", []
    now = timezone.now()
    # Server-side binding sends %b's bytes as they are; errors become django.db errors.
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        cursor.execute(
            f"UPDATE {quote(model._meta.db_table)} SET embedding = %b, embedding_model = %s, "
            "embedding_hash = %s, embedding_status = %s, embedding_error = '', "
            f"embedded_at = %s, embedding_updated_at = %s, embedding_attempts = 0{source} "
            f"WHERE {quote(model._meta.pk.column)} = %s AND {still}",
            [
                l2_normalize([vector])[0],  # unit: exact scans rank by <#>
                model_id,
                digest,
                EmbeddingStatus.READY.value,
                now,
                now,
                *source_value,
                pk,
                *check,
            ],
        )
        return cursor.rowcount > 0


def _mark_failed(model: type, pk, name: str, reason: str, result: EmbedResult) -> None:
    logger.warning("visualsearch: image %s failed: %s", pk, reason)
    storage = image_storage()
    file_lookup = storage.on_image(visualsearch_settings.IMAGE_FIELD)
    source = {"embedded_file": name} if storage.separate else {}
    model._base_manager.filter(pk=pk, **{file_lookup: name}).update(
        embedding_status=EmbeddingStatus.FAILED,
        embedding_error=reason,
        embedding_updated_at=timezone.now(),
        **source,
    )
    result.failed[pk] = reason


def mark_failed(model: type, pks: Iterable, reason: str) -> int:
    """Record ``reason`` on rows whose embedding cannot be stored; returns how many.
    ``model`` is an embedding model, or the image model (its vector rows are meant)."""
    logger.error("visualsearch: images %s failed: %s", list(pks), reason)
    if not hasattr(model, "embedding_encoder"):
        model = image_storage().model
    count = model._base_manager.filter(pk__in=list(pks)).update(
        embedding_status=EmbeddingStatus.FAILED,
        embedding_error=reason,
        embedding_updated_at=timezone.now(),
    )
    cache.invalidate()
    return count


def mark_stale(model: type | None = None) -> int:
    """Mark ready rows of ``model`` (an embedding model; default: the image vectors) embedded
    by another encoder model ``stale``; returns how many.

    Queries only ever read vectors of the active model, so stale rows simply drop out of
    results until the background re-embedding reaches them.
    """
    model = model or image_storage().model
    count = (
        model._base_manager.filter(embedding_status=EmbeddingStatus.READY)
        .exclude(embedding_model=model.embedding_encoder().model_id)
        .update(embedding_status=EmbeddingStatus.STALE, embedding_updated_at=timezone.now())
    )
    if count:
        cache.invalidate()
    return count
