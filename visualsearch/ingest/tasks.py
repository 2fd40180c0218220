"""Celery tasks. Messages carry ids only: ``(app_label, model_name, [pk, …])``.

Bookkeeping on the rows: :func:`enqueue` stamps ``embedding_queued_at`` on the rows it sent
(the sweep leaves them to their task for ``SWEEP_PENDING_AFTER`` seconds), and every task run
counts an attempt in ``embedding_attempts`` before it encodes, committed at once so that a
worker that dies mid-task still counts it. A row that used up ``TASK_MAX_ATTEMPTS`` is marked
``failed`` with the reason instead of being sent round again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta

from celery import shared_task
from celery.signals import worker_process_init
from django.apps import apps
from django.db import DataError, Error, InterfaceError, OperationalError, router, transaction
from django.db.models import Case, F, Q, QuerySet, TextField, Value, When
from django.db.models.functions import Cast, Coalesce, Concat, NullIf
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.ingest import fusion
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_text_model

logger = logging.getLogger(__name__)

#: Errors worth another try: the database or the file storage was briefly unavailable.
TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError)
#: Statuses of rows that still wait for a vector.
WAITING = (EmbeddingStatus.PENDING, EmbeddingStatus.STALE)
#: A batch whose rows have this many attempts, the last one died, is split (a row per task):
#: one poison row then fails alone. Once is a deploy or a kill; twice in a row, the batch.
SPLIT_AFTER = 2


@shared_task(bind=True, name="visualsearch.embed_images", acks_late=True, ignore_result=True)
def embed_images_task(self, app_label: str, model_name: str, pks: list, force: bool = False) -> str:
    """Embed the given image rows; retry transient failures with exponential backoff."""
    from visualsearch.ingest.pipeline import embed_images

    outcome = _run(self, embed_images, app_label, model_name, pks, force)
    enqueue_fused(fusion.images_changed(pks))  # their products' fused vectors (FUSION)
    return outcome


@shared_task(bind=True, name="visualsearch.embed_texts", acks_late=True, ignore_result=True)
def embed_texts_task(self, app_label: str, model_name: str, pks: list, force: bool = False) -> str:
    """Embed the given product-text rows; retries like :func:`embed_images_task`."""
    from visualsearch.ingest.texts import embed_texts

    outcome = _run(self, embed_texts, app_label, model_name, pks, force)
    if visualsearch_settings.FUSION is not None:  # the words changed: the fused vectors too
        outcome += (
            f"; fused: {fusion.embed_fused(pks, model=apps.get_model(app_label, model_name))}"
        )
    return outcome


@shared_task(bind=True, name="visualsearch.embed_fused", acks_late=True, ignore_result=True)
def embed_fused_task(self, pks: list) -> str:
    """Build the fused vectors of the product-text rows ``pks``
    (:func:`visualsearch.ingest.fusion.embed_fused`); transient errors are retried with
    backoff, and rows left ``pending`` by a lost task are sent again by the sweep."""
    try:
        return str(fusion.embed_fused(pks))
    except TRANSIENT_ERRORS as exc:
        max_retries = visualsearch_settings.TASK_MAX_RETRIES
        if self.request.retries >= max_retries:
            raise
        raise self.retry(exc=exc, countdown=_backoff(self), max_retries=max_retries) from exc


def enqueue_fused(pks: list) -> int:
    """Send fused-vector tasks for the product-text rows ``pks``, in batches; a broker that
    cannot be reached leaves them ``pending`` for the sweep. Returns how many were sent."""
    batch_size, sent = visualsearch_settings.BATCH_SIZE, 0
    for start in range(0, len(pks), batch_size):
        try:
            embed_fused_task.apply_async(
                args=(pks[start : start + batch_size],), queue=visualsearch_settings.QUEUE
            )
        except Exception as exc:  # kombu raises several types when the broker is down
            logger.error("visualsearch: could not enqueue fused vectors, they wait: %s", exc)
            break
        sent += len(pks[start : start + batch_size])
    return sent


def _run(task, embed, app_label: str, model_name: str, pks: list, force: bool) -> str:
    """Run ``embed`` on the rows as one counted attempt: record refused vectors, retry
    transient and other errors with backoff, give rows up after ``TASK_MAX_ATTEMPTS``."""
    from visualsearch.ingest.pipeline import EmbedResult, mark_failed

    model = apps.get_model(app_label, model_name)
    rows = _vector_model(model)
    todo, counted, gave_up = list(pks), [], []
    try:
        todo, counted, gave_up, split = _begin_attempt(rows, todo, force)
        if split:  # is one of them a poison row? Each goes alone, then.
            sent = enqueue(model, todo, force=force, batch_size=1)
            return f"split into {sent} task(s): a worker died on this batch before"
        result = embed(todo, model=model, force=force) if todo else EmbedResult()
    except DataError as exc:  # the database refuses the vector: retrying cannot help
        mark_failed(model, todo, f"The database rejected the vector: {exc}".strip())
        return f"{len(todo)} failed: {exc}"
    except TRANSIENT_ERRORS as exc:
        _give_back(rows, counted)  # an outage is not the rows' fault
        max_retries = visualsearch_settings.TASK_MAX_RETRIES
        if task.request.retries >= max_retries:
            logger.error("visualsearch: giving up on %s, rows stay pending: %s", pks, exc)
            raise
        countdown = _backoff(task)
        logger.warning("visualsearch: transient error on %s, retry in %ss: %s", pks, countdown, exc)
        raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
    except Exception as exc:  # the encoder's RuntimeError, a storage SDK's own error…
        return _after_error(task, rows, todo, exc)
    _reset_attempts(rows, result.ready + result.reused + result.skipped)
    result.failed.update(dict.fromkeys(gave_up, "gave up"))
    return str(result)


def _vector_model(model: type) -> type:
    """The model whose rows hold the vectors and their bookkeeping: ``model`` itself, or for
    an image model whose vectors live in visualsearch's table, that table."""
    return model if hasattr(model, "embedding_encoder") else image_storage().model


def _backoff(task) -> int:
    """Seconds before the next try: doubling with each retry, at most TASK_RETRY_BACKOFF_MAX."""
    return min(2 ** (task.request.retries + 1), visualsearch_settings.TASK_RETRY_BACKOFF_MAX)


def _begin_attempt(rows: type, pks: list, force: bool) -> tuple[list, list, list, bool]:
    """Count this run as an attempt on the rows of ``pks`` that need work (every one with
    ``force``), in its own committed UPDATE, so that a worker dying mid-task still counts it.

    Rows that used up ``TASK_MAX_ATTEMPTS`` are left out, and those still waiting are marked
    failed. The attempt starts with no error: one that dies leaves none ("the worker died").
    A batch that workers died on ``SPLIT_AFTER`` times is split instead (a row per task, this
    run not counted). Returns ``(pks to embed or split, pks counted, pks given up, split)``.
    """
    limit = visualsearch_settings.TASK_MAX_ATTEMPTS
    candidates = rows._base_manager.filter(pk__in=pks)
    if not force:
        candidates = candidates.exclude(embedding_status=EmbeddingStatus.READY)
    columns = ("pk", "embedding_attempts", "embedding_status", "embedding_error")
    spent, counted, gave_up, died = set(), [], [], False
    for pk, attempts, status, error in candidates.values_list(*columns):
        if attempts >= limit:
            spent.add(pk)
            if status in WAITING:
                gave_up.append(pk)
        else:
            counted.append(pk)
            died |= attempts >= SPLIT_AFTER and status in WAITING and not error
    split = died and len(counted) > 1
    with transaction.atomic(using=router.db_for_write(rows)):
        if gave_up:
            _give_up(rows._base_manager.filter(pk__in=gave_up), gave_up)
        if counted and not split:
            rows._base_manager.filter(pk__in=counted).update(
                embedding_attempts=F("embedding_attempts") + 1,
                embedding_error=Case(
                    When(embedding_status__in=WAITING, then=Value("")),
                    default=F("embedding_error"),
                    output_field=TextField(),
                ),
            )
    if split:  # the rows that need work, to send one by one
        return counted, [], gave_up, True
    return [pk for pk in pks if pk not in spent], counted, gave_up, False


def _give_back(rows: type, pks: list) -> None:
    """Undo this run's attempt on ``pks`` and note the retry as a send (the sweep leaves the
    rows to it). Best effort: the database may be what failed."""
    if not pks:
        return
    try:
        rows._base_manager.filter(pk__in=pks, embedding_attempts__gt=0).update(
            embedding_attempts=F("embedding_attempts") - 1, embedding_queued_at=timezone.now()
        )
    except Error as exc:
        logger.info("visualsearch: could not give back the attempt on %s: %s", pks, exc)


def _after_error(task, rows: type, pks: list, exc: Exception) -> str:
    """After an error that is neither transient nor the database refusing a vector: record it
    on the waiting rows as their last error, retry with backoff while the rows have attempts
    and the task retries left, else mark them failed. Returns the task's result."""
    reason = f"{type(exc).__name__}: {exc}".removesuffix(": ")[:1000]
    waiting = rows._base_manager.filter(pk__in=pks, embedding_status__in=WAITING)
    waiting.update(embedding_error=reason, embedding_queued_at=timezone.now())
    max_retries = visualsearch_settings.TASK_MAX_RETRIES
    last = task.request.retries >= max_retries
    limit = visualsearch_settings.TASK_MAX_ATTEMPTS
    failed = _give_up(waiting if last else waiting.filter(embedding_attempts__gte=limit), pks)
    if not last and waiting.exists():  # those given up are no longer waiting
        countdown = _backoff(task)
        logger.warning("visualsearch: %s on %s, retry in %ss", reason, pks, countdown, exc_info=exc)
        raise task.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
    return f"{failed} failed: {reason}"


def _give_up(rows: QuerySet, pks: list) -> int:
    """Mark the waiting ``rows`` (among ``pks``) failed: "Gave up after N attempts: <their
    last error>", or "the worker died" where the last attempt recorded none. Returns how
    many."""
    text = TextField()
    attempts = Cast("embedding_attempts", text)
    noun = Case(
        When(embedding_attempts=1, then=Value(" attempt: ")),
        default=Value(" attempts: "),
        output_field=text,
    )
    last_error = NullIf("embedding_error", Value(""), output_field=text)
    why = Coalesce(last_error, Value("the worker died"), output_field=text)
    count = rows.filter(embedding_status__in=WAITING).update(
        embedding_status=EmbeddingStatus.FAILED,
        embedding_error=Concat(Value("Gave up after "), attempts, noun, why, output_field=text),
        embedding_updated_at=timezone.now(),
    )
    if count:
        label = rows.model._meta.label
        logger.error("visualsearch: gave up on %d %s row(s) among %s", count, label, pks)
    return count


def _reset_attempts(rows: type, pks: list) -> None:
    """Start the attempts of rows that got their vector afresh."""
    if pks:
        rows._base_manager.filter(pk__in=pks, embedding_attempts__gt=0).update(embedding_attempts=0)


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
    advance_switch()  # an encoder switch: start it, re-send what was lost, cut over
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
        fusion.mark_stale()  # after an encoder switch or a new recipe
        sent += enqueue_fused(fusion.waiting(older_than=_sweep_cutoff()))
    return sent


def _sweep_cutoff() -> object:
    return timezone.now() - timedelta(seconds=visualsearch_settings.SWEEP_PENDING_AFTER)


def _left_over(model: type) -> list:
    """Pks of the rows to send again: ``pending`` for longer than ``SWEEP_PENDING_AFTER``, and
    ``stale``, except those queued within that time since their status last changed (their
    task is on its way: waiting in the queue, or retrying)."""
    cutoff = timezone.now() - timedelta(seconds=visualsearch_settings.SWEEP_PENDING_AFTER)
    queued = Q(embedding_queued_at__gte=cutoff) & Q(
        embedding_queued_at__gte=F("embedding_updated_at")
    )
    return list(
        model._base_manager.filter(
            Q(embedding_status=EmbeddingStatus.PENDING, embedding_updated_at__lt=cutoff)
            | Q(embedding_status=EmbeddingStatus.STALE)
        )
        .exclude(queued)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


def enqueue(
    model: type, pks: Iterable, *, force: bool = False, batch_size: int | None = None
) -> int:
    """Send embedding tasks for ``pks`` in batches; returns how many rows were enqueued.

    The rows of each batch sent get ``embedding_queued_at`` (one UPDATE). A broker that cannot
    be reached is logged, not raised: the rows stay ``pending`` and the sweep (or
    ``visualsearch_reindex``) picks them up later, so a page save never fails on it.
    """
    from visualsearch.models import EmbeddedText

    batch_size = batch_size or visualsearch_settings.BATCH_SIZE
    task = embed_texts_task if issubclass(model, EmbeddedText) else embed_images_task
    rows = _vector_model(model)._base_manager
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
        rows.filter(pk__in=batch).update(embedding_queued_at=timezone.now())
        sent += len(batch)
    return sent


# --- the encoder switch (visualsearch.ingest.switch) ---------------------------------------


@shared_task(bind=True, name="visualsearch.build_generation", acks_late=True, ignore_result=True)
def build_generation_task(self, model_id: str, pks: list) -> str:
    """Embed ``pks`` for the building encoder generation ``model_id``; cut over when that
    covers the catalog. Transient errors are retried with backoff (bounded)."""
    from visualsearch.encoders import get_encoder
    from visualsearch.ingest import switch

    started = switch.building()
    encoder = get_encoder()
    if started is None or started.model_id != model_id or encoder.model_id != model_id:
        return f"{model_id} is not building here"
    try:
        result = switch.build(pks, encoder, started)
    except TRANSIENT_ERRORS as exc:
        retries = self.request.retries
        if retries >= visualsearch_settings.TASK_MAX_RETRIES:
            raise
        countdown = min(2 ** (retries + 1), visualsearch_settings.TASK_RETRY_BACKOFF_MAX)
        raise self.retry(exc=exc, countdown=countdown) from exc
    if not switch.uncovered(started).exists():
        cut_over()
    return str(result)


def enqueue_build(generation: object) -> int:
    """Send the images the building ``generation`` still lacks to ``build_generation``
    tasks; returns how many. A broker that cannot be reached is logged (the sweep re-sends)."""
    from visualsearch.ingest import switch

    pks = list(switch.uncovered(generation).order_by("pk").values_list("pk", flat=True))
    size = visualsearch_settings.BATCH_SIZE
    sent = 0
    for start in range(0, len(pks), size):
        try:
            build_generation_task.apply_async(
                args=(generation.model_id, pks[start : start + size]),
                queue=visualsearch_settings.QUEUE,
            )
        except Exception as exc:  # kombu raises several types when the broker is down
            logger.error("visualsearch: could not enqueue the encoder build: %s", exc)
            break
        sent += len(pks[start : start + size])
    return sent


def cut_over(*, force: bool = False) -> bool:
    """:func:`visualsearch.ingest.switch.cut_over`, then the rows it left pending are sent to
    the embedding tasks. True when the new encoder serves now."""
    from visualsearch.ingest import switch

    pending = switch.cut_over(force=force)
    if pending:
        enqueue(image_storage().model, pending)
    return pending is not None


def advance_switch() -> bool:
    """What the sweep does for an encoder switch: start it (the workers build it), re-send
    what a lost task left out (``SWEEP_PENDING_AFTER`` after it started), cut over when it
    is covered. True when a cut-over happened."""
    from visualsearch.encoders import get_encoder
    from visualsearch.ingest import generation, switch

    try:
        started = switch.sync()
    except Exception:  # an encoder that cannot be built is reported by the checks and tasks
        logger.exception("visualsearch: cannot bring the encoder generations up to date")
        return False
    if started is None:
        generation.ensure_recorded(get_encoder())
        return False
    if cut_over():
        return True
    age = (timezone.now() - started.created_at).total_seconds()
    if started.is_new or age > visualsearch_settings.SWEEP_PENDING_AFTER:
        enqueue_build(started)
    return False


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
    if visualsearch_settings.WARM_UP_WORKERS:
        load_encoders()


def load_encoders() -> list[tuple[object, float]]:
    """Load the image encoder, and the text encoder where text search is on; returns
    ``(encoder, seconds)`` for each loaded. A broken model is logged, not raised: it must not
    stop the worker, and its tasks report it."""
    from visualsearch.encoders import get_encoder, get_text_encoder

    getters = [(get_encoder, "encoder")]
    if visualsearch_settings.TEXT_MODEL:
        getters.append((get_text_encoder, "text encoder"))
    loaded = []
    for get, name in getters:
        started = time.monotonic()
        try:
            encoder = get()
            encoder.warm_up()
        except Exception:
            logger.exception("visualsearch: could not load the %s", name)
            continue
        loaded.append((encoder, time.monotonic() - started))
        logger.info("visualsearch: %r loaded", encoder)
    return loaded
