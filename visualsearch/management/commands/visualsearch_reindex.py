"""``manage.py visualsearch_reindex``: embed what is missing, stale or everything.

Works in batches in primary-key order; every batch is committed, so an interrupted run
loses nothing and the next run continues with the rows still left (``--all`` prints the
``--start-after`` value to resume from).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from tqdm import tqdm

from visualsearch.conf import get_image_model, visualsearch_settings
from visualsearch.encoders import get_encoder
from visualsearch.models import EmbeddingStatus
from visualsearch.pipeline import embed_images, mark_stale
from visualsearch.tasks import enqueue


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

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_image_model()
        batch_size = options["batch_size"]
        if batch_size is None:
            batch_size = visualsearch_settings.BATCH_SIZE
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if options["resize"]:
            self._resize(model)
        if not any(options[name] for name in ("missing", "stale", "failed", "all")):
            options["missing"] = options["stale"] = True
        stale = mark_stale(model)
        if stale:
            self.stdout.write(f"Marked {stale} row(s) embedded by another model as stale.")

        rows = self._select(model, options)
        if options["start_after"] is not None:
            rows = rows.filter(pk__gt=options["start_after"])
        pks = list(rows.order_by("pk").values_list("pk", flat=True))
        encoder = get_encoder()
        self.stdout.write(f"{len(pks)} image(s) to embed with {encoder.model_id}.")
        if not pks:
            return
        if options["enqueue"]:
            sent = enqueue(model, pks, force=options["all"], batch_size=batch_size)
            self.stdout.write(f"Enqueued {sent} image(s) in batches of {batch_size}.")
            if sent < len(pks):
                raise CommandError("The broker could not be reached; the rest stay pending.")
            return

        totals = {"ready": 0, "reused": 0, "skipped": 0, "failed": 0}
        last = None
        bar = tqdm(total=len(pks), unit="img", disable=options["no_progress"], file=self.stderr)
        try:
            for start in range(0, len(pks), batch_size):
                batch = pks[start : start + batch_size]
                result = embed_images(batch, model=model, force=options["all"])
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

    def _resize(self, model: type) -> None:
        dimensions = get_encoder().dimensions
        table = connection.ops.quote_name(model._meta.db_table)
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Deferred FK checks of earlier writes in this transaction block ALTER TABLE.
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(
                    f"ALTER TABLE {table} ALTER COLUMN embedding TYPE vector({int(dimensions)}) "
                    "USING NULL"
                )
            count = model._base_manager.update(
                embedding_status=EmbeddingStatus.PENDING,
                embedding_model="",
                embedding_hash="",
                embedding_updated_at=timezone.now(),
            )
        self.stdout.write(f"Resized the vector column to {dimensions}; {count} row(s) to embed.")
