"""Product texts: the words text search reads, kept in step with the products.

``TEXT_FIELDS`` name the product fields (or ``__`` paths) whose values make a product's text.
:func:`sync_texts` runs when a product is saved and in ``visualsearch_reindex``: it writes the
full-text search vector at once (in the saving transaction) and marks the row ``pending``
when the words changed. :func:`embed_texts` (the Celery task, or the reindex command inline)
encodes pending rows with the text encoder, idempotently: a row whose words (SHA-256) and
encoder model id match its stored vector is not encoded again, and words seen in another
ready row reuse that row's vector.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from django.contrib.postgres.search import SearchVector
from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db.models import TextField, Value
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_text_encoder
from visualsearch.ingest.loop import EmbedResult, Item, Strategy, content_hash, embed
from visualsearch.ingest.pipeline import mark_stale
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.lookup import get_product_model, get_text_model

logger = logging.getLogger(__name__)

#: Full-text weights of the fields, in ``TEXT_FIELDS`` order (the last repeats).
WEIGHTS = "ABCD"


def text_fields() -> list[str]:
    """``TEXT_FIELDS``, checked to be a non-empty list of product field paths."""
    fields = visualsearch_settings.TEXT_FIELDS
    if isinstance(fields, str) or not isinstance(fields, list | tuple) or not fields:
        raise ImproperlyConfigured(
            'VISUALSEARCH["TEXT_FIELDS"] must be a non-empty list of product field names.'
        )
    product_model = get_product_model()
    for path in fields:
        model = product_model
        parts = str(path).split("__")
        for number, part in enumerate(parts):
            try:
                field = model._meta.get_field(part)
            except FieldDoesNotExist:
                raise ImproperlyConfigured(
                    f'VISUALSEARCH["TEXT_FIELDS"]: {path!r} is not a field path of '
                    f"{product_model.__name__}."
                ) from None
            if number < len(parts) - 1:
                if not (field.many_to_one or field.one_to_one):
                    raise ImproperlyConfigured(
                        f'VISUALSEARCH["TEXT_FIELDS"]: {path!r} crosses {part!r}, which is not '
                        "a foreign key."
                    )
                model = field.related_model
    return list(fields)


def local_fields() -> set[str]:
    """The product's own fields that ``TEXT_FIELDS`` read (for ``update_fields``)."""
    return {path.split("__", 1)[0] for path in text_fields()}


def documents(product_pks: Iterable) -> dict[Any, list[str]]:
    """``{product pk: [value of each TEXT_FIELDS path, as text]}`` in one query."""
    fields = text_fields()
    rows = get_product_model()._base_manager.filter(pk__in=list(product_pks))
    return {
        pk: ["" if value is None else str(value).strip() for value in values]
        for pk, *values in rows.values_list("pk", *fields)
    }


def document_text(parts: list[str]) -> str:
    """The words the text encoder reads: the non-empty values, one per line."""
    return "\n".join(part for part in parts if part)


def index_hash(parts: list[str]) -> str:
    """Hash of what the search vector is built from (fields, configuration and words)."""
    source = [visualsearch_settings.TEXT_SEARCH_CONFIG, text_fields(), parts]
    return hashlib.sha256(json.dumps(source).encode()).hexdigest()


def search_vector(parts: list[str]) -> SearchVector:
    """The weighted ``tsvector`` expression for a product's values (first field weighs most)."""
    config = visualsearch_settings.TEXT_SEARCH_CONFIG
    vectors = [
        SearchVector(
            Value(part, output_field=TextField()),
            config=config,
            weight=WEIGHTS[min(number, len(WEIGHTS) - 1)],
        )
        for number, part in enumerate(parts)
    ]
    combined = vectors[0]
    for vector in vectors[1:]:
        combined = combined + vector
    return combined


def sync_texts(product_pks: Iterable) -> list:
    """Bring the text rows of ``product_pks`` up to date; returns the pks to (re-)embed.

    Creates missing rows and rewrites the search vector of rows whose words changed (which
    become ``pending``), in one upsert. Three queries at most, whatever the number of pks.
    """
    model = get_text_model()
    if model is None:
        return []
    attname = model._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname
    docs = documents(product_pks)
    known = dict(
        model._base_manager.filter(**{f"{attname}__in": list(docs)}).values_list(
            attname, "text_hash"
        )
    )
    now = timezone.now()
    rows = []
    for product_pk, parts in docs.items():
        digest = index_hash(parts)
        if known.get(product_pk) == digest:
            continue
        rows.append(
            model(
                **{attname: product_pk},
                text_hash=digest,
                search_vector=search_vector(parts),
                embedding_status=EmbeddingStatus.PENDING,
                embedding_error="",
                embedding_updated_at=now,
                embedding_attempts=0,
                fused_status=EmbeddingStatus.PENDING,  # FUSION: the fused vector follows
                fused_updated_at=now,
            )
        )
    if not rows:
        return []
    model._base_manager.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=[visualsearch_settings.PRODUCT_FIELD],
        update_fields=[
            "text_hash",
            "search_vector",
            "embedding_status",
            "embedding_error",
            "embedding_updated_at",
            "embedding_attempts",
            "fused_status",
            "fused_updated_at",
        ],
    )
    return [row.pk for row in rows]


class TextStrategy(Strategy):
    """Product texts: the products' current words (the search vector is refreshed with them)."""

    noun = "text"

    def __init__(self, model: type) -> None:
        self.model, self.encoder = model, get_text_encoder()

    def read(self, pks: list, result: EmbedResult) -> list[Item]:
        model = self.model
        attname = model._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname
        columns = ("pk", attname, "text_hash", "embedding_hash", "embedding_model")
        rows = model._base_manager.filter(pk__in=pks).values_list(*columns, "embedding_status")
        rows = {row[0]: row for row in rows}
        with_vector = model._base_manager.filter(pk__in=list(rows), embedding__isnull=False)
        has_vector = set(with_vector.values_list("pk", flat=True))
        docs = documents(row[1] for row in rows.values())
        result.missing = [pk for pk in pks if pk not in rows or rows[pk][1] not in docs]
        items = []
        for pk, product_pk, text_hash, embedded_hash, model_id, status in rows.values():
            if product_pk not in docs:
                continue
            parts = docs[product_pk]
            text = document_text(parts)
            item = Item(pk, text_hash, content_hash(text.encode()), payload=text, extra=parts)
            if not text:
                self.fail(item, "The product has no text in TEXT_FIELDS.", result)
                continue
            item.stored_hash, item.stored_model, item.status = embedded_hash, model_id, status
            item.has_vector = pk in has_vector
            items.append(item)
        return items

    def encode(self, items: list[Item]) -> Any:
        return self.encoder.encode_texts([item.payload for item in items])

    def write(self, item: Item, vector: Any) -> bool:
        return _write(
            self.model, item.pk, item.guard, item.extra, vector, item.digest, self.encoder.model_id
        )

    def fail(self, item: Item, reason: str, result: EmbedResult) -> None:
        _fail(self.model, item.pk, item.guard, reason, result)


def embed_texts(pks: Iterable, *, model: type | None = None, force: bool = False) -> EmbedResult:
    """Embed the text rows ``pks`` of ``model`` (default: the configured text model).

    Reads the products' current words (and refreshes the search vector with them). A product
    without any words is recorded as ``failed``; database errors raise, for the caller to
    retry. A row whose words changed while we worked is left to the task its save enqueued.
    """
    model = model or get_text_model()
    if model is None:
        raise ImproperlyConfigured('Set VISUALSEARCH["TEXT_MODEL"] to embed product texts.')
    return embed(TextStrategy(model), pks, force=force)


def _write(model, pk, text_hash: str, parts, vector, digest: str, model_id: str) -> bool:
    """Store a vector (None: keep the stored one) and refresh the search vector, unless the
    row's words were re-indexed meanwhile (its ``text_hash`` changed). True when updated."""
    now = timezone.now()
    values: dict[str, Any] = {
        "text_hash": index_hash(parts),
        "search_vector": search_vector(parts),
        "embedding_model": model_id,
        "embedding_hash": digest,
        "embedding_status": EmbeddingStatus.READY,
        "embedding_error": "",
        "embedding_updated_at": now,
        "embedding_attempts": 0,
    }
    if vector is not None:
        values["embedding"] = vector
        values["embedded_at"] = now
    return bool(model._base_manager.filter(pk=pk, text_hash=text_hash).update(**values))


def _fail(model, pk, text_hash: str, reason: str, result: EmbedResult) -> None:
    logger.warning("visualsearch: text %s failed: %s", pk, reason)
    model._base_manager.filter(pk=pk, text_hash=text_hash).update(
        embedding_status=EmbeddingStatus.FAILED,
        embedding_error=reason,
        embedding_updated_at=timezone.now(),
    )
    result.failed[pk] = reason


def mark_stale_texts() -> int:
    """Mark ready text rows of another text encoder ``stale``; returns how many."""
    model = get_text_model()
    return 0 if model is None else mark_stale(model)


def products_without_text() -> list:
    """Pks of products that have no text row yet (saved inside ``deferred_embedding``)."""
    model = get_text_model()
    attname = model._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname
    return list(
        get_product_model()
        ._base_manager.exclude(pk__in=model._base_manager.values(attname))
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def product_batches(batch_size: int = 2000) -> Iterable[list]:
    """Product pks in batches (pk order), for :func:`sync_texts` over the whole catalog."""
    products = get_product_model()._base_manager.order_by("pk").values_list("pk", flat=True)
    last = None
    while True:
        batch_qs = products if last is None else products.filter(pk__gt=last)
        batch = list(batch_qs[:batch_size])
        if not batch:
            return
        yield batch
        last = batch[-1]
