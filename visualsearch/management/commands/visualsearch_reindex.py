"""``manage.py visualsearch_reindex``: embed what is missing, stale or everything.

Images first (their copies of product fields, ``IMAGE_FILTER_FIELDS``, are brought up to
date before anything is embedded), then, when text search is on (``TEXT_MODEL``), product
texts: every product's words are re-read (missing text rows created, changed ones re-indexed
for full-text search) and the rows that need it are embedded. ``--images`` or ``--texts``
limits the run to one.

Works in batches in primary-key order; every batch is committed, so an interrupted run
loses nothing and the next run continues with the rows still left (``--all`` prints the
``--start-after`` value to resume from).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q, QuerySet
from django.utils import timezone
from tqdm import tqdm

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_encoder, get_text_encoder
from visualsearch.ingest import fusion, switch
from visualsearch.ingest.pipeline import embed_images, mark_stale
from visualsearch.ingest.tasks import enqueue, enqueue_build
from visualsearch.ingest.texts import embed_texts, mark_stale_texts, product_batches, sync_texts
from visualsearch.models import EmbeddingStatus
from visualsearch.query import fused
from visualsearch.storage.copies import sync_copies
from visualsearch.storage.layout import ImageStorage, image_storage
from visualsearch.storage.lookup import get_text_model
from visualsearch.storage.resize import resize


class Command(BaseCommand):
    help = "Embed images that have no vector of the active encoder (or all of them)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--missing", action="store_true", help="rows never embedded (default)")
        parser.add_argument("--stale", action="store_true", help="rows embedded by another model")
        parser.add_argument("--failed", action="store_true", help="retry rows that failed")
        parser.add_argument("--all", action="store_true", help="re-encode every row")
        parser.add_argument("--batch-size", type=int, default=None, help="images per batch")
        parser.add_argument(
            "--enqueue",
            action="store_true",
            help="send batches to Celery instead of running inline",
        )
        parser.add_argument("--start-after", default=None, help="resume --all after this pk")
        parser.add_argument(
            "--resize",
            action="store_true",
            help="resize the vector column to the encoder's size first (drops stored vectors)",
        )
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        only = parser.add_mutually_exclusive_group()
        only.add_argument("--images", action="store_true", help="images only")
        only.add_argument("--texts", action="store_true", help="product texts only")

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = options["batch_size"]
        if batch_size is None:
            batch_size = visualsearch_settings.BATCH_SIZE
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if not any(options[name] for name in ("missing", "stale", "failed", "all")):
            options["missing"] = options["stale"] = True
        text_model = get_text_model()
        if options["texts"] and text_model is None:
            raise CommandError('--texts: text search is off (VISUALSEARCH["TEXT_MODEL"]).')
        if not options["texts"]:
            self._images(image_storage(), batch_size, options)
        if text_model is not None and not options["images"]:
            self._texts(text_model, batch_size, options)

    def _images(self, storage: ImageStorage, batch_size: int, options: dict) -> None:
        model = storage.model
        if options["resize"]:
            self._resize(model, get_encoder().dimensions)
        self._switch(options)
        added = storage.add_missing(limit=None)
        if added:
            self.stdout.write(f"Registered {len(added)} image(s) saved without a vector row.")
        replaced = storage.mark_replaced()
        if replaced:
            self.stdout.write(f"Marked {len(replaced)} image(s) whose file changed as pending.")
        copied = sync_copies()
        if copied:
            self.stdout.write(f"Copied product fields (IMAGE_FILTER_FIELDS) to {copied} image(s).")
        stale = mark_stale(model)
        if stale:
            self.stdout.write(f"Marked {stale} row(s) embedded by another model as stale.")
        pks = self._pks(model, options)
        self.stdout.write(f"{len(pks)} image(s) to embed with {get_encoder().model_id}.")
        self._embed(model, pks, embed_images, "image", batch_size, options)

    def _switch(self, options: dict) -> None:
        """A configured encoder that is not the serving one is built first, while the serving
        one answers queries (inline here, or by the workers with ``--enqueue``)."""
        started = switch.sync()
        state = switch.progress()
        if state is not None and state.note:
            raise CommandError(state.note)
        if started is None:
            return
        self.stdout.write(
            f"Encoder switch: {state.serving} keeps serving while {started.model_id} is built "
            f"({state.covered} of {state.total} image(s) derived from stored vectors)."
        )
        if options["enqueue"]:
            enqueue_build(started)
            self.stdout.write("The workers build the rest; it takes over when done.")
        elif switch.run_inline() is not None:  # rows it lacks are pending: embedded below
            self.stdout.write(f"{started.model_id} serves now.")

    def _texts(self, model: type, batch_size: int, options: dict) -> None:
        if options["resize"]:
            self._resize(model, get_text_encoder().dimensions)
        changed = sum(len(sync_texts(batch)) for batch in product_batches())
        if changed:
            self.stdout.write(f"Indexed the words of {changed} new or changed product(s).")
        stale = mark_stale_texts()
        if stale:
            self.stdout.write(f"Marked {stale} text(s) embedded by another model as stale.")
        pks = self._pks(model, options)
        model_id = get_text_encoder().model_id
        self.stdout.write(f"{len(pks)} product text(s) to embed with {model_id}.")
        self._embed(model, pks, embed_texts, "text", batch_size, options)
        self._fused(model, batch_size, options)

    def _fused(self, model: type, batch_size: int, options: dict) -> None:
        """The fused product vectors (``FUSION``): their index, then the waiting ones."""
        current = fusion.recipe()
        if current is None:
            return
        index = fused.ensure_index()
        stale = fusion.mark_stale()
        if options["all"]:
            fusion.mark_pending(model._base_manager.values_list(self._product_field, flat=True))
        elif stale:
            self.stdout.write(f"Marked {stale} fused vector(s) of another recipe as stale.")
        pks = fusion.waiting()
        self.stdout.write(
            f"{len(pks)} fused vector(s) to build ({current.model_id}, "
            f"{current.dimensions} dimensions, index {index})."
        )
        self._embed(model, pks, fusion.embed_fused, "fused vector", batch_size, options)

    @property
    def _product_field(self) -> str:
        return visualsearch_settings.PRODUCT_FIELD

    def _pks(self, model: type, options: dict) -> list:
        rows = self._select(model, options)
        if options["start_after"] is not None:
            rows = rows.filter(pk__gt=options["start_after"])
        pks = list(rows.order_by("pk").values_list("pk", flat=True))
        self._restart(model, pks, options)
        return pks

    def _restart(self, model: type, pks: list, options: dict) -> None:
        """Give the rows to embed their attempts afresh (tasks give up at TASK_MAX_ATTEMPTS);
        with ``--failed``, the failed ones become ``pending`` again, their error cleared."""
        for start in range(0, len(pks), 10_000):
            rows = model._base_manager.filter(pk__in=pks[start : start + 10_000])
            if options["failed"]:
                rows.filter(embedding_status=EmbeddingStatus.FAILED).update(
                    embedding_status=EmbeddingStatus.PENDING,
                    embedding_error="",
                    embedding_attempts=0,
                    embedding_updated_at=timezone.now(),
                )
            rows.filter(embedding_attempts__gt=0).update(embedding_attempts=0)

    def _embed(
        self, model: type, pks: list, embed: Any, unit: str, batch_size: int, options: dict
    ) -> None:
        if not pks:
            return
        if options["enqueue"]:
            sent = enqueue(model, pks, force=options["all"], batch_size=batch_size)
            self.stdout.write(f"Enqueued {sent} {unit}(s) in batches of {batch_size}.")
            if sent < len(pks):
                raise CommandError("The broker could not be reached; the rest stay pending.")
            return

        totals = {"ready": 0, "reused": 0, "skipped": 0, "failed": 0}
        last = None
        bar = tqdm(
            total=len(pks),
            unit="img" if unit == "image" else unit,
            disable=options["no_progress"],
            file=self.stderr,
        )
        try:
            for start in range(0, len(pks), batch_size):
                batch = pks[start : start + batch_size]
                result = embed(batch, model=model, force=options["all"])
                for key in totals:
                    value = getattr(result, key)
                    totals[key] += len(value)
                last = batch[-1]
                bar.update(len(batch))
        except KeyboardInterrupt:
            bar.close()
            raise CommandError(
                f"Interrupted after pk {last}; finished batches are saved. "
                "Run again to continue"
                + (f" (--all --start-after {last})." if options["all"] else ".")
            ) from None
        bar.close()
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {totals['ready']} embedded, {totals['reused']} reused, "
                f"{totals['skipped']} unchanged, {totals['failed']} failed."
            )
        )

    def _select(self, model: type, options: dict) -> QuerySet:
        rows = model._base_manager.all()
        if options["all"]:
            return rows
        condition = Q(pk__in=[])
        if options["missing"]:
            condition |= Q(embedding_status=EmbeddingStatus.PENDING)
        if options["stale"]:
            condition |= Q(embedding_status=EmbeddingStatus.STALE)
        if options["failed"]:
            condition |= Q(embedding_status=EmbeddingStatus.FAILED)
        return rows.filter(condition)

    def _resize(self, model: type, dimensions: int) -> None:
        count, warnings = resize(model, dimensions)
        for warning in warnings:
            self.stderr.write(self.style.WARNING(warning))
        self.stdout.write(f"Resized the vector column to {dimensions}; {count} row(s) to embed.")
