"""Blue/green encoder switch: a new encoder is built in the background while the previous
one keeps serving, then takes over in one transaction.

1. :func:`sync` notices that the configured encoder is not the serving generation's and
   records it as ``building`` (an encoder of another vector size is refused with a message:
   ``visualsearch_reindex --resize``). Nothing is emptied; queries keep the serving vectors
   and encode query photos with the serving encoder (:mod:`visualsearch.encoders.serving`).
2. The build: vectors derivable from stored base features (a retrained projection) are made
   in NumPy batches (:func:`derive_stored`); the other images go to
   ``visualsearch.build_generation`` tasks; images saved meanwhile are embedded for both.
3. :func:`cut_over` when coverage reaches ``SWITCH_COVERAGE`` (of the rows that have a
   vector): one ``UPDATE … FROM`` copies the new vectors into the serving column and flips
   the generations in the same transaction, so every query sees either all old or all new
   vectors; rows left uncovered become ``pending``. The built copies are then deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connections, router, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder, serving
from visualsearch.ingest import features
from visualsearch.ingest.generation import building, record
from visualsearch.ingest.pipeline import build_generation as build
from visualsearch.models import EmbeddingStatus, EncodedVector, EncoderGeneration, GenerationState
from visualsearch.storage.layout import image_storage
from visualsearch.web import cache

__all__ = ["Progress", "building", "cut_over", "progress", "run_inline", "sync", "uncovered"]

logger = logging.getLogger(__name__)

#: Seconds from the start of a switch before it may cut over: longer than any process's
#: reading of the serving generation lasts (``serving.TTL``).
GRACE = serving.TTL + 1.0
#: Rows of a derive batch (vectors read, projected and written per round trip).
DERIVE_BATCH = 1000
EMBEDDED = (EmbeddingStatus.READY, EmbeddingStatus.STALE)


@dataclass
class Progress:
    """Where a switch stands (admin overview, ``visualsearch_switch``)."""

    serving: str
    building: str
    covered: int = 0
    failed: int = 0
    total: int = 0
    started_at: Any = None
    note: str = ""

    @property
    def share(self) -> float:
        return 1.0 if not self.total else (self.covered + self.failed) / self.total

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate since the build started (None: no rate yet)."""
        if not self.building or not self.covered or self.started_at is None:
            return None
        elapsed = (timezone.now() - self.started_at).total_seconds()
        left = self.total - self.covered - self.failed
        return max(0.0, left * elapsed / self.covered)


def sync() -> EncoderGeneration | None:
    """Bring the generations in line with the configured encoder; returns the building one
    (its ``is_new`` says whether this call started it: the caller then sends the rest to the
    workers, :func:`visualsearch.ingest.tasks.enqueue_build`, or builds it inline).

    No serving generation yet: the configured encoder is recorded as serving. Serving another
    model that has ready vectors: the configured encoder starts building (stored features are
    derived at once). Serving a model without any ready vector: the configured one serves at
    once, there is nothing to keep.
    """
    configured = get_encoder()
    model_id = configured.model_id
    rows = image_storage().rows
    with transaction.atomic():
        generations = list(
            EncoderGeneration.objects.select_for_update().exclude(state=GenerationState.RETIRED)
        )
        current = next((g for g in generations if g.state == GenerationState.SERVING), None)
        started = next((g for g in generations if g.state == GenerationState.BUILDING), None)
        if started is not None and started.model_id != model_id:
            _retire(started)  # configured anew before it finished
            started = None
        if current is None or current.model_id == model_id:
            if current is None:
                record(configured, GenerationState.SERVING)
            elif current.note:  # a refused switch was configured away again
                current.note = ""
                current.save(update_fields=["note"])
            return None
        if not rows.filter(
            embedding_model=current.model_id, embedding_status__in=EMBEDDED
        ).exists():
            _retire(current)
            record(configured, GenerationState.SERVING)
            return None
        if configured.dimensions != current.dimensions:
            current.note = (
                f"{model_id} makes {configured.dimensions}-d vectors and {current.model_id} "
                f"{current.dimensions}-d ones: a switch keeps one column, so resize it with "
                "`manage.py visualsearch_reindex --resize` (stored vectors are dropped)."
            )
            current.save(update_fields=["note"])
            logger.error("visualsearch: %s", current.note)
            return None
        new = started is None
        started = started or record(configured, GenerationState.BUILDING)
    if new:
        _cleared()
        derive_stored(started, configured)
    started.is_new = new
    return started


def _retire(generation: EncoderGeneration) -> None:
    generation.state, generation.retired_at = GenerationState.RETIRED, timezone.now()
    generation.save(update_fields=["state", "retired_at"])


def _cleared() -> None:
    """Other processes see a new generation within ``serving.TTL``; this one at once."""
    serving.forget()


def uncovered(generation: EncoderGeneration) -> Any:
    """Rows with a vector that the building ``generation`` has no vector for yet."""
    built = EncodedVector.objects.filter(
        model_id=generation.model_id, digest=OuterRef("embedding_hash")
    )
    return (
        image_storage()
        .rows.filter(embedding_status__in=EMBEDDED)
        .exclude(embedding_hash__in=list(generation.failures))
        .exclude(Exists(built))
    )


def derive_stored(generation: EncoderGeneration, encoder: Any) -> int:
    """Vectors of the building generation from stored base features (and from serving vectors
    of the base model), in NumPy batches: a retrained projection encodes nothing. Returns how
    many were derived."""
    base = features.base_of(encoder)
    if base is None:
        return 0
    made = 0
    rows = uncovered(generation).order_by("pk").values_list("pk", "embedding_hash")
    last = None
    while True:
        batch = list((rows if last is None else rows.filter(pk__gt=last))[:DERIVE_BATCH])
        if not batch:
            return made
        last = batch[-1][0]
        found = features.lookup(base.model_id, {digest for _pk, digest in batch})
        found.update(_base_vectors(base, [pk for pk, digest in batch if digest not in found]))
        digests = sorted(found)
        if digests:
            vectors = encoder.project(np.stack([found[digest] for digest in digests]))
            features.store(generation.model_id, digests, vectors)
            made += len(digests)


def _base_vectors(base: Any, pks: list) -> dict[str, np.ndarray]:
    """Serving vectors of the base model among ``pks`` (the catalog served the frozen base
    encoder), kept as base features too, for the retrains after this one."""
    rows = image_storage().rows.filter(pk__in=pks, embedding_model=base.model_id)
    found = {
        digest: np.asarray(vector, dtype=np.float32)
        for digest, vector in rows.exclude(embedding=None).values_list(
            "embedding_hash", "embedding"
        )
    }
    if found:
        features.store(base.model_id, list(found), list(found.values()))
    return found


def progress() -> Progress | None:
    """Where the switch stands; None before any generation is recorded."""
    generations = {
        g.state: g for g in EncoderGeneration.objects.exclude(state=GenerationState.RETIRED)
    }
    current = generations.get(GenerationState.SERVING)
    if current is None:
        return None
    started = generations.get(GenerationState.BUILDING)
    if started is None:
        return Progress(serving=current.model_id, building="", note=current.note)
    total = image_storage().rows.filter(embedding_status__in=EMBEDDED).count()
    left = uncovered(started).count()
    failed = len(started.failures)
    return Progress(
        serving=current.model_id,
        building=started.model_id,
        covered=total - left - failed,
        failed=failed,
        total=total,
        started_at=started.created_at,
        note=current.note,
    )


def cut_over(*, force: bool = False) -> list | None:
    """Make the building generation serve, if it covers ``SWITCH_COVERAGE`` of the rows
    (``force``: whatever it covers). None when it did not happen, else the pks of the rows it
    left ``pending`` (to embed with the new encoder: the caller enqueues them)."""
    state = progress()
    if state is None or not state.building:
        return None
    if not force and state.share < visualsearch_settings.SWITCH_COVERAGE:
        return None
    # Every process must have read that a switch is on (serving.TTL) before its old model's
    # vectors go: until then, one that has not would find none.
    early = GRACE - (timezone.now() - state.started_at).total_seconds()
    if early > 0:
        time.sleep(early)
    storage = image_storage()
    using = router.db_for_write(storage.model)
    with transaction.atomic(using=using):
        generations = {
            g.state: g
            for g in EncoderGeneration.objects.select_for_update().exclude(
                state=GenerationState.RETIRED
            )
        }
        started = generations.get(GenerationState.BUILDING)
        if started is None or started.model_id != state.building:
            return None
        copied, pending = _copy_vectors(storage.model, started.model_id, using)
        _retire(generations[GenerationState.SERVING])
        started.state, started.serving_since = GenerationState.SERVING, timezone.now()
        started.save(update_fields=["state", "serving_since"])
        transaction.on_commit(_after_cut_over, using=using)
    logger.info(
        "visualsearch: %s serves now (%d vectors copied, %d rows to embed)",
        state.building, copied, len(pending),
    )  # fmt: skip
    return pending


def _copy_vectors(model: type, model_id: str, using: str) -> tuple[int, list]:
    """Copy the generation's vectors into the serving column; set the rest ``pending``."""
    quote = connections[using].ops.quote_name
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    now = timezone.now()
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS t SET embedding = v.vector, embedding_model = v.model_id, "
            "embedding_status = %s, embedding_error = '', embedding_updated_at = %s "
            f"FROM {EncodedVector._meta.db_table} AS v "
            "WHERE v.model_id = %s AND v.digest = t.embedding_hash "
            "AND t.embedding_status IN (%s, %s)",
            [EmbeddingStatus.READY.value, now, model_id, *[s.value for s in EMBEDDED]],
        )
        copied = cursor.rowcount
        cursor.execute(
            f"UPDATE {table} SET embedding_status = %s, embedding_updated_at = %s "
            "WHERE embedding_status IN (%s, %s) AND embedding_model <> %s "
            f"RETURNING {pk}",
            [EmbeddingStatus.PENDING.value, now, *[s.value for s in EMBEDDED], model_id],
        )
        pending = [row[0] for row in cursor.fetchall()]
    return copied, pending


def _after_cut_over() -> None:
    _cleared()
    cache.invalidate()
    clean_up()


def clean_up() -> int:
    """Delete built vectors of generations that no longer build (copied, or abandoned);
    base features of the configured encoder stay. Returns how many rows went."""
    keep = set(
        EncoderGeneration.objects.filter(state=GenerationState.BUILDING).values_list(
            "model_id", flat=True
        )
    )
    base = features.base_of(get_encoder())
    if base is not None:
        keep.add(base.model_id)
    deleted, _ = EncodedVector.objects.exclude(model_id__in=keep).delete()
    return deleted


def run_inline(*, progress_every: int = 0, stdout: Any = None) -> list | None:
    """Build the whole generation in this process (no workers), then cut over (what
    :func:`cut_over` returns)."""
    started = sync()
    if started is None:
        return None
    encoder = get_encoder()
    pks = list(uncovered(started).order_by("pk").values_list("pk", flat=True))
    size = visualsearch_settings.BATCH_SIZE
    for start in range(0, len(pks), size):
        build(pks[start : start + size], encoder, started)
        if stdout is not None and progress_every and (start // size) % progress_every == 0:
            stdout.write(f"{min(start + size, len(pks))}/{len(pks)} built")
    return cut_over()
