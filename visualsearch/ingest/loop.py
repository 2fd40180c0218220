"""The one embedding loop (:func:`embed`), whatever is embedded: a :class:`Strategy` says how
rows are read, encoded and written (images: :mod:`visualsearch.ingest.pipeline`, product
texts: :mod:`visualsearch.ingest.texts`, a building encoder generation:
:mod:`visualsearch.ingest.generation`).

Idempotent: a row whose content (SHA-256) and encoder model id match its stored vector is not
encoded again, and content already stored under the encoder reuses that vector. Encoding runs
outside any transaction, so a save of a row being encoded never waits for the encoder; every
write is a short statement guarded against concurrent changes, in its own savepoint, so one
row the database refuses (a NaN vector) fails alone, never its neighbours.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import DatabaseError, DataError, router, transaction

from visualsearch.ingest.images import InvalidImage
from visualsearch.models import EmbeddingStatus

logger = logging.getLogger(__name__)

#: Errors that say nothing about one row (the database or the storage is away): raised for the
#: task to retry, never recorded on rows.
TRANSIENT = (OSError, DatabaseError)


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
    features: Any = None  # stored base features of the content (adapted encoders)


class Strategy:
    """What :func:`embed` does differently for images, texts and a building generation.

    ``encoder`` is a snapshot (``BaseEncoder.snapshot()``): the vectors of a batch and the
    model id written beside them come from the same weights.
    """

    model: type  # the vector rows
    encoder: Any
    noun = "row"

    def read(self, pks: list, result: EmbedResult) -> list[Item]:
        """The rows of ``pks`` as items; unreadable ones recorded in ``result``."""
        raise NotImplementedError

    def prepare(self, item: Item) -> Any:
        """The encoder's input for ``item``; raises ``InvalidImage`` for unusable data."""
        return item.payload

    def derive(self, item: Item) -> Any:
        """A vector derived from the stored one without encoding (None: encode)."""
        return None

    def hold(self, digests: set[str]) -> Any:
        """A context held from the look-up of known vectors to the last write (default:
        nothing; images lock each content so that two workers encode it once)."""
        return nullcontext()

    def known(self, digests: set[str]) -> dict[str, Any]:
        """Vectors of the encoder already stored for these contents, by content hash."""
        return vectors_by_hash(self.model, digests, self.encoder.model_id)

    def encode(self, items: list[Item]) -> Any:
        """Vectors of the items' payloads, in order."""
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
            if item.status != EmbeddingStatus.READY and _write(strategy, item, None, result):
                result.restored.append(item.pk)
            result.skipped.append(item.pk)
            continue
        derived = strategy.derive(item) if not force else None
        if derived is not None:  # adapted from the stored base vector or base features
            if _write(strategy, item, derived, result):
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
    once, no transaction open meanwhile), then write each row."""
    with strategy.hold({item.digest for item in work}):
        _reuse_encode_write(strategy, work, result, force)


def _reuse_encode_write(strategy: Strategy, work: list, result: EmbedResult, force: bool) -> None:
    if not force:
        known = strategy.known({item.digest for item in work})
        for item in [item for item in work if item.digest in known]:
            if _write(strategy, item, known[item.digest], result):
                result.reused.append(item.pk)
        work = [item for item in work if item.digest not in known]
    unique: dict[str, Item] = {}
    for item in work:
        unique.setdefault(item.digest, item)
    vectors = _encode(strategy, list(unique.values()), result)
    for item in work:
        if item.digest in vectors and _write(strategy, item, vectors[item.digest], result):
            result.ready.append(item.pk)
        elif item.digest not in vectors and item.pk not in result.failed:
            strategy.fail(item, result.failed[unique[item.digest].pk], result)


def _encode(strategy: Strategy, items: list[Item], result: EmbedResult) -> dict[str, Any]:
    """``{digest: vector}`` for ``items``. When the batch fails, each item is encoded alone:
    those that still fail are recorded failed with the encoder's error; when every one
    fails, the encoder itself is broken and the error is raised (the task retries)."""
    if not items:
        return {}
    try:
        return dict(zip([item.digest for item in items], strategy.encode(items), strict=True))
    except TRANSIENT:
        raise
    except Exception as exc:
        if len(items) == 1:
            raise
        logger.warning("visualsearch: a batch of %d failed (%s); one by one", len(items), exc)
    vectors, errors = {}, []
    for item in items:
        try:
            vectors[item.digest] = strategy.encode([item])[0]
        except TRANSIENT:
            raise
        except Exception as exc:
            errors.append((item, exc))
    if not vectors:
        raise errors[0][1]
    for item, exc in errors:
        strategy.fail(item, f"The encoder failed on this {strategy.noun}: {exc}", result)
    return vectors


def _write(strategy: Strategy, item: Item, vector: Any, result: EmbedResult) -> bool:
    """``strategy.write`` in a savepoint: a vector the database (or the finite check) refuses
    fails this row alone."""
    if vector is not None and not np.isfinite(np.asarray(vector, dtype=np.float32)).all():
        strategy.fail(item, "The encoder returned a vector with NaN or infinite values.", result)
        return False
    try:
        with transaction.atomic(using=router.db_for_write(strategy.model)):
            return strategy.write(item, vector)
    except DataError as exc:
        strategy.fail(item, f"The database rejected the vector: {exc}".strip(), result)
        return False


def vectors_by_hash(model: type, digests: set[str], model_id: str) -> dict[str, np.ndarray]:
    """Ready vectors of ``model_id`` in ``model`` for these contents, by content hash."""
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
