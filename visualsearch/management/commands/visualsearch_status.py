"""``manage.py visualsearch_status``: image counts by status and model, backlog, failures."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from visualsearch.ingest.status import embedding_report, queue_backlog, queue_name


class Command(BaseCommand):
    help = (
        "Show how many images are pending, ready, failed or stale, per encoder model, the "
        "embedding queue's backlog and the most recent failures."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--failures", type=int, default=5, help="Recent failures to list (default 5, 0: none)."
        )
        parser.add_argument(
            "--no-backlog", action="store_true", help="Do not ask the broker for the backlog."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = embedding_report(failures=options["failures"])
        self.stdout.write(f"Active encoder: {report.encoder_model} ({report.dimensions}-d)")
        self.stdout.write(f"{'status':<10} {'count':>8}  model")
        for row in report.rows:
            model_id = row["embedding_model"] or "-"
            marker = "  (active)" if row["embedding_model"] == report.encoder_model else ""
            self.stdout.write(
                f"{row['embedding_status']:<10} {row['count']:>8}  {model_id}{marker}"
            )
        self.stdout.write(f"{'total':<10} {report.total:>8}")
        if not options["no_backlog"]:
            queue = queue_name()
            backlog = queue_backlog(queue)
            count = "unknown" if backlog is None else str(backlog)
            self.stdout.write(f"{'backlog':<10} {count:>8}  task(s) waiting in queue {queue!r}")
        if report.failures:
            self.stdout.write("Recent failures:")
            for row in report.failures:
                when = row.embedding_updated_at.strftime("%Y-%m-%d %H:%M")
                self.stdout.write(f"  image {row.pk} ({when}): {row.embedding_error}")
