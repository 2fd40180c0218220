"""``manage.py visualsearch_filter_indexes``: partial HNSW indexes for frequent filter values.

For every value of a copied field (``IMAGE_FILTER_FIELDS``) with at least ``--min-rows`` ready
images, one HNSW index over those images alone (``WHERE category_id = 7``); filtered queries
on that value then walk it instead of scanning the value's images one by one
(``visualsearch.storage.filter_indexes``). Run it again when the catalog grows; ``--drop`` removes
them. ``--concurrently`` builds without blocking writes (and without a transaction).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from visualsearch.storage import filter_indexes
from visualsearch.storage.copies import copied_fields


class Command(BaseCommand):
    help = "Build partial HNSW indexes for the frequent values of copied filter fields."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--field", action="append", help="copied image field (default: all)")
        parser.add_argument(
            "--min-rows", type=int, default=2000, help="ready images a value needs (2000)"
        )
        parser.add_argument("--concurrently", action="store_true", help="CREATE … CONCURRENTLY")
        parser.add_argument("--drop", action="store_true", help="drop the partial indexes")
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            fields = list(copied_fields())
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from None
        if not fields:
            raise CommandError('Nothing to index: VISUALSEARCH["IMAGE_FILTER_FIELDS"] is empty.')
        chosen = options["field"] or fields
        unknown = sorted(set(chosen) - set(fields))
        if unknown:
            raise CommandError(f"Not copied fields: {', '.join(unknown)} (copied: {fields}).")
        if options["min_rows"] < 1:
            raise CommandError("--min-rows must be at least 1.")
        if options["drop"]:
            dropped = sum(filter_indexes.drop(field) for field in chosen)
            self.stdout.write(f"Dropped {dropped} partial index(es).")
            return
        for field in chosen:
            bar = tqdm(unit="index", disable=options["no_progress"], file=self.stderr, desc=field)
            made = filter_indexes.create(
                field,
                options["min_rows"],
                concurrently=options["concurrently"],
                progress=bar.update,
            )
            bar.close()
            total = len(filter_indexes.indexed_values().get(field, ()))
            self.stdout.write(
                f"{field}: built {len(made)} partial index(es); {total} value(s) have one."
            )
