"""The one embedding path: re-read rows, open files through storage, decode, encode, write.

Used by the Celery task, the reindex command (inline) and anything else that embeds. It is
idempotent: a row whose file content (SHA-256) and encoder model id match its stored vector
is not encoded again, and content seen in another ready row reuses that row's vector (also
when two workers get the same new content at once: the second waits for the first's vector).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import psycopg
from django.db import connections, router, transaction
from django.utils import timezone

from visualsearch import cache, statements
from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder
from visualsearch.encoders.base import l2_normalize
from visualsearch.images import InvalidImage, decode_image, fit_for_encoder, read_limited
from visualsearch.models import EmbeddingStatus
from visualsearch.storage import ImageStorage, image_storage

logger = logging.getLogger(__name__)


@dataclass
class EmbedResult:
    """What one call of :func:`embed_images` did, by primary key."""

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
    model = storage.model
    encoder = get_encoder()
    image_field = visualsearch_settings.IMAGE_FIELD
    result = EmbedResult()
    pks = list(dict.fromkeys(pks))
    _add_missing_rows(storage, pks)
    rows = {row.pk: row for row in storage.with_images(storage.rows.filter(pk__in=pks))}
    result.missing = [pk for pk in pks if pk not in rows]

    work: list[tuple] = []  # (row, file name, digest, image)
    for row in rows.values():
        fieldfile = getattr(storage.image_of(row), image_field)
        if not fieldfile:
            _mark_failed(model, row.pk, "", "The row has no image file.", result)
            continue
        try:
            with fieldfile.storage.open(fieldfile.name, "rb") as handle:
                data = read_limited(handle, visualsearch_settings.MAX_IMAGE_BYTES)
        except FileNotFoundError:
            _mark_failed(
                model, row.pk, fieldfile.name, "The image file is missing from storage.", result
            )
            continue
        except InvalidImage as exc:
            _mark_failed(model, row.pk, fieldfile.name, str(exc), result)
            continue
        digest = content_hash(data)
        unchanged = (
            row.embedding_hash == digest
            and row.embedding_model == encoder.model_id
            and row.embedding is not None
        )
        if unchanged and not force:
            if row.embedding_status != EmbeddingStatus.READY:
                _write(model, row.pk, fieldfile.name, row.embedding, digest, encoder.model_id)
                result.restored.append(row.pk)
            result.skipped.append(row.pk)
            continue
        if row.embedding_hash == digest and row.embedding is not None and not force:
            derived = encoder.derive(row.embedding, row.embedding_model)
            if derived is not None:  # e.g. adapted from the stored base vector
                _write(model, row.pk, fieldfile.name, derived, digest, encoder.model_id)
                result.reused.append(row.pk)
                continue
        try:
            image = decode_image(data, max_pixels=visualsearch_settings.MAX_IMAGE_PIXELS)
        except InvalidImage as exc:
            _mark_failed(model, row.pk, fieldfile.name, str(exc), result)
            continue
        # Bounded like query photos: a 20000x1 banner must not blow up the encoder's resize,
        # and a batch holds at most BATCH_SIZE images of 1024 pixels a side.
        work.append((row, fieldfile.name, digest, fit_for_encoder(image)))

    if work:
        # From the look-up of known vectors to the write, one transaction holding a lock per
        # content hash: a worker given content that another one is encoding right now waits
        # for it, then reuses its vector (one photo uploaded twice at once is encoded once).
        using = router.db_for_write(model)
        with transaction.atomic(using=using):
            _lock_contents(using, {digest for _, _, digest, _ in work})
            if not force:
                known = _vectors_by_hash(model, {item[2] for item in work}, encoder.model_id)
                for row, name, digest, _image in [item for item in work if item[2] in known]:
                    _write(model, row.pk, name, known[digest], digest, encoder.model_id)
                    result.reused.append(row.pk)
                work = [item for item in work if item[2] not in known]
            # Identical content inside the batch is encoded once.
            unique: dict[str, int] = {}
            images = []
            for _row, _name, digest, image in work:
                if digest not in unique:
                    unique[digest] = len(images)
                    images.append(image)
            vectors = encoder.encode_images(images) if images else []
            for row, name, digest, _image in work:
                if _write(model, row.pk, name, vectors[unique[digest]], digest, encoder.model_id):
                    result.ready.append(row.pk)
    if result.changed:
        cache.invalidate()
    logger.debug("visualsearch: %s (%s)", result, encoder.model_id)
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
    inner product (``visualsearch.query._distance``).

    The vector goes to Postgres as a binary parameter (pgvector's binary format) on the
    same connection and transaction as the ORM: Django binds parameters as text, and
    formatting then parsing 1,280 floats cost more than the UPDATE itself (2.8 ms against
    1.4 ms per row, measured in bench/embed_bench.py).
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
    """Mark ready rows embedded by another encoder model ``stale``; returns how many.

    Queries only ever read vectors of the active model, so stale rows simply drop out of
    results until the background re-embedding reaches them.
    """
    model = model or image_storage().model
    count = (
        model._base_manager.filter(embedding_status=EmbeddingStatus.READY)
        .exclude(embedding_model=get_encoder().model_id)
        .update(embedding_status=EmbeddingStatus.STALE, embedding_updated_at=timezone.now())
    )
    if count:
        cache.invalidate()
    return count
