"""The one embedding loop (:func:`embed`), with an image and a text strategy.

Images: re-read rows, open files through storage, decode, encode, write. Texts
(:mod:`visualsearch.ingest.texts`): the products' words. Used by the Celery tasks, the
reindex command (inline) and anything else that embeds. It is idempotent: a row whose content
(SHA-256) and encoder model id match its stored vector is not encoded again, and content seen
in another ready row reuses that row's vector (also when two workers get the same new image
at once: the second waits for the first's vector).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from django.db import connections, router, transaction
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder
from visualsearch.encoders.base import l2_normalize
from visualsearch.ingest.images import InvalidImage, decode_stored, read_stored
from visualsearch.models import EmbeddingStatus
from visualsearch.storage import statements
from visualsearch.storage.layout import ImageStorage, image_storage
from visualsearch.web import cache

logger = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    """What one call of :func:`embed` did, by primary key."""

    ready: list = field(default_factory=list)
    reused: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    restored: list = field(default_factory=list)  # unchanged rows set back to ready

    @property
    def changed(self) -> bool:
        """Whether any row's status or vector changed (so query results may have)."""
        return bool(self.ready or self.reused or self.failed or self.restored)

    def __str__(self) -> str:
        return (
            f"{len(self.ready)} embedded, {len(self.reused)} reused, "
            f"{len(self.skipped)} unchanged, "
            f"{len(self.failed)} failed, {len(self.missing)} gone"
        )


def content_hash(data: bytes) -> str:
    """SHA-256 of the file's bytes, hex."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Item:
    """One row on its way through :func:`embed`: what was read, and what to encode."""

    pk: Any
    guard: Any  # the write is skipped unless this still holds (file name, words' hash)
    digest: str  # SHA-256 of what is embedded
    stored: Any = None  # the row's vector (None: none, or not read)
    stored_hash: str = ""  # the hash of what the stored vector was made from
    stored_model: str = ""
    status: str = ""
    has_vector: bool = False
    payload: Any = None  # what the encoder takes (image, text), prepared by the strategy
    extra: Any = None  # what the strategy's write needs besides (the words' parts)


class Strategy:
    """What :func:`embed` does differently for images and texts."""

    model: type  # the vector rows
    encoder: Any
    noun = "row"
    #: Hold one advisory lock per content hash from the look-up of known vectors to the write.
    locks_contents = False

    def read(self, pks: list, result: EmbedResult) -> list[Item]:
        """The rows of ``pks`` as items; unreadable ones recorded in ``result``."""
        raise NotImplementedError

    def prepare(self, item: Item) -> Any:
        """The encoder's input for ``item``; raises ``InvalidImage`` for unusable data."""
        return item.payload

    def derive(self, item: Item) -> Any:
        """A vector derived from the stored one without encoding (None: encode)."""
        return None

    def encode(self, payloads: list) -> Any:
        raise NotImplementedError

    def write(self, item: Item, vector: Any) -> bool:
        """Store ``vector`` (None: keep the stored one) and ``ready``, unless the guard moved."""
        raise NotImplementedError

    def fail(self, item: Item, reason: str, result: EmbedResult) -> None:
        raise NotImplementedError

    def finished(self, result: EmbedResult) -> None:
        logger.debug("visualsearch: %ss %s (%s)", self.noun, result, self.encoder.model_id)


def embed(strategy: Strategy, pks: Iterable, *, force: bool = False) -> EmbedResult:
    """The one embedding loop, for images and texts alike: read the rows, skip those whose
    content and encoder are unchanged, derive or reuse known vectors, encode identical
    content once, write with a guard against concurrent changes."""
    result = EmbedResult()
    model_id = strategy.encoder.model_id
    work = []
    for item in strategy.read(list(dict.fromkeys(pks)), result):
        unchanged = item.digest == item.stored_hash and item.has_vector
        if unchanged and item.stored_model == model_id and not force:
            if item.status != EmbeddingStatus.READY and strategy.write(item, None):
                result.restored.append(item.pk)
            result.skipped.append(item.pk)
            continue
        derived = strategy.derive(item) if unchanged and not force else None
        if derived is not None:  # e.g. adapted from the stored base vector
            if strategy.write(item, derived):
                result.reused.append(item.pk)
            continue
        try:
            item.payload = strategy.prepare(item)
        except InvalidImage as exc:
            strategy.fail(item, str(exc), result)
            continue
        work.append(item)
    if work:
        _encode_and_write(strategy, work, result, force)
    strategy.finished(result)
    return result


def _encode_and_write(strategy: Strategy, work: list, result: EmbedResult, force: bool) -> None:
    """Reuse vectors of identical content already stored, encode the rest (identical content
    once), write them; one transaction (with a lock per content hash for images: a worker
    given content another one is encoding waits for it, then reuses its vector)."""
    model_id = strategy.encoder.model_id
    using = router.db_for_write(strategy.model)
    with transaction.atomic(using=using):
        if strategy.locks_contents:
            _lock_contents(using, {item.digest for item in work})
        if not force:
            known = _vectors_by_hash(strategy.model, {item.digest for item in work}, model_id)
            for item in [item for item in work if item.digest in known]:
                if strategy.write(item, known[item.digest]):
                    result.reused.append(item.pk)
            work = [item for item in work if item.digest not in known]
        unique: dict[str, int] = {}
        payloads = []
        for item in work:
            if item.digest not in unique:
                unique[item.digest] = len(payloads)
                payloads.append(item.payload)
        vectors = strategy.encode(payloads) if payloads else []
        for item in work:
            if strategy.write(item, vectors[unique[item.digest]]):
                result.ready.append(item.pk)


class ImageStrategy(Strategy):
    """Images: files opened through Django storage, decoded safely, bounded for the encoder."""

    noun = "image"
    locks_contents = True

    def __init__(self, storage: ImageStorage) -> None:
        self.storage, self.model, self.encoder = storage, storage.model, get_encoder()

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
        return items

    def prepare(self, item: Item) -> Any:
        return decode_stored(item.payload)  # a batch holds BATCH_SIZE images of ≤ 1024 px

    def derive(self, item: Item) -> Any:
        return self.encoder.derive(item.stored, item.stored_model)

    def encode(self, payloads: list) -> Any:
        return self.encoder.encode_images(payloads)

    def write(self, item: Item, vector: Any) -> bool:
        vector = item.stored if vector is None else vector
        return _write(self.model, item.pk, item.guard, vector, item.digest, self.encoder.model_id)

    def fail(self, item: Item, reason: str, result: EmbedResult) -> None:
        _mark_failed(self.model, item.pk, item.guard, reason, result)

    def finished(self, result: EmbedResult) -> None:
        if result.changed:
            cache.invalidate()
        super().finished(result)


def embed_images(pks: Iterable, *, model: type | None = None, force: bool = False) -> EmbedResult:
    """Embed the images ``pks`` of the configured image model (``model``, when given, must
    be that model or its vector model: tasks name it).

    Permanent problems (no file, missing file, undecodable data) mark the row ``failed`` with
    a reason. Transient ones (storage or database errors) raise, for the caller to retry.
    A row whose file was replaced while we worked is left to the task its save enqueued.
    """
    storage = image_storage()
    if model is not None and model not in (storage.model, storage.image_model):
        raise ValueError(f"{model._meta.label} is not the configured image model.")
    return embed(ImageStrategy(storage), pks, force=force)


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


def _lock_contents(using: str, digests: set[str]) -> None:
    """Take a transaction-level advisory lock per content hash (SHA-256, first 64 bits),
    in ascending order so that two batches sharing contents cannot deadlock."""
    keys = sorted(
        int.from_bytes(bytes.fromhex(digest[:16]), "big", signed=True) for digest in digests
    )
    with connections[using].cursor() as cursor:
        for key in keys:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _vectors_by_hash(model: type, digests: set[str], model_id: str) -> dict[str, np.ndarray]:
    rows = (
        model._base_manager.filter(
            embedding_hash__in=digests,
            embedding_model=model_id,
            embedding_status=EmbeddingStatus.READY,
        )
        .exclude(embedding=None)
        .values_list("embedding_hash", "embedding")
    )
    return {digest: vector for digest, vector in rows}


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
            f"embedded_at = %s, embedding_updated_at = %s{source} "
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
