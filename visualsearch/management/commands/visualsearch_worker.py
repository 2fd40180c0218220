"""``manage.py visualsearch_worker``: a Celery worker for the embedding queue, safe on a GPU.

It runs the host's Celery app (the one its project package configures, as
``celery -A mysite worker`` would; ``--app`` names another), consuming only
``VISUALSEARCH["QUEUE"]`` (the app's default queue when that is None), with the ``solo`` pool
(one task at a time in this process) or ``threads`` (``--concurrency`` threads sharing one
model). Never ``prefork``: forked children inherit a CUDA context they cannot use, and torch's
thread pools break after a fork. The encoder is loaded in this process before the worker
consumes, so the first task does not wait for it, and once: the pool runs in this process.

    python manage.py visualsearch_worker                 # solo pool
    python manage.py visualsearch_worker --pool threads --concurrency 4
    python manage.py visualsearch_worker -- --without-gossip --max-memory-per-child 8000000

Arguments after ``--`` go to ``celery worker`` as they are.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import import_string

from visualsearch.conf import visualsearch_settings

POOLS = ("solo", "threads")


class Command(BaseCommand):
    help = (
        "Start a Celery worker for visualsearch's embedding queue with a GPU-safe pool (solo "
        "or threads, never prefork), the encoder loaded once before it consumes."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--pool", choices=POOLS, default="solo", help="Default: solo.")
        parser.add_argument(
            "--concurrency", type=int, default=None, help="Threads of the threads pool."
        )
        parser.add_argument(
            "--queue", help='Queue to consume (default: VISUALSEARCH["QUEUE"], else the app\'s).'
        )
        parser.add_argument(
            "--app", help="Dotted path of the Celery app (default: the project's, current_app)."
        )
        parser.add_argument("--loglevel", default="info")
        parser.add_argument("-n", "--hostname", help="Node name (default: visualsearch@%%h).")
        parser.add_argument(
            "--no-warm-up", action="store_true", help="Load the encoder on the first task."
        )
        parser.add_argument("celery_args", nargs="*", help="After --: passed to celery worker.")

    def handle(self, *args: Any, **options: Any) -> None:
        app = self._app(options["app"])
        if options["pool"] == "solo" and (options["concurrency"] or 1) != 1:
            raise CommandError("The solo pool runs one task at a time: use --pool threads.")
        queue = options["queue"] or visualsearch_settings.QUEUE or app.conf.task_default_queue
        batch_size = visualsearch_settings.BATCH_SIZE
        if not options["no_warm_up"]:
            self._warm_up()
        # The solo pool sends worker_process_init in this process: the encoder is loaded
        # already, the per-process warm-up (for prefork children) is not needed.
        from celery.signals import worker_process_init

        from visualsearch.ingest import tasks

        worker_process_init.disconnect(tasks.start_warm_up, dispatch_uid="visualsearch.warm_up")
        argv = [
            "worker",
            f"--pool={options['pool']}",
            f"--concurrency={options['concurrency'] or 1}",
            f"--queues={queue}",
            f"--loglevel={options['loglevel']}",
            f"--hostname={options['hostname'] or 'visualsearch@%h'}",
            *options["celery_args"],
        ]
        self.stdout.write(
            f"visualsearch_worker: queue {queue!r}, pool {options['pool']}, batches of "
            f"{batch_size} (BATCH_SIZE), pid {os.getpid()}"
        )
        self.stdout.flush()
        app.worker_main(argv=argv)

    def _app(self, path: str | None) -> Any:
        if path:
            try:
                return import_string(path)
            except ImportError as exc:
                raise CommandError(f"--app {path!r} could not be imported: {exc}") from exc
        from celery import current_app

        return current_app._get_current_object()

    def _warm_up(self) -> None:
        """Load the encoders in this process now; the worker's tasks share them."""
        from visualsearch.ingest.tasks import load_encoders

        loaded = load_encoders()
        if not loaded:  # a remote endpoint still starting: the tasks will retry
            self.stderr.write("visualsearch_worker: could not load the encoder now (see the log)")
        for encoder, seconds in loaded:
            self.stdout.write(
                f"visualsearch_worker: {encoder!r} loaded in {seconds:.2f}s (pid {os.getpid()})"
            )
        self.stdout.flush()
