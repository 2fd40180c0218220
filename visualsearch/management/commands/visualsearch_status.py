"""``manage.py visualsearch_status``: image counts by embedding status and encoder model."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from visualsearch.conf import get_image_model
from visualsearch.encoders import get_encoder
from visualsearch.models import EmbeddingQuerySet


class Command(BaseCommand):
    help = "Show how many images are pending, ready, failed or stale, per encoder model."

    def handle(self, *args: Any, **options: Any) -> None:
        model = get_image_model()
        encoder = get_encoder()
        rows = EmbeddingQuerySet(model).counts_by_status()
        self.stdout.write(f"Active encoder: {encoder.model_id} ({encoder.dimensions}-d)")
        self.stdout.write(f"{'status':<10} {'count':>8}  model")
        total = 0
        for row in rows:
            model_id = row["embedding_model"] or "-"
            marker = "  (active)" if row["embedding_model"] == encoder.model_id else ""
            self.stdout.write(
                f"{row['embedding_status']:<10} {row['count']:>8}  {model_id}{marker}"
            )
            total += row["count"]
        self.stdout.write(f"{'total':<10} {total:>8}")
