"""Part 3's runs: the bench database, and the catalog re-embedded by the real Celery worker or
by the inline ``visualsearch_reindex`` command, timed until every row is ready."""

from __future__ import annotations

import argparse
import io
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BASE_DIR
from bench.common.processes import stop
from bench.embed.meters import CpuMeter, steady_rate, window_rate

DATABASE = "bench_embed"


class E2E:
    """The bench database, the private broker and the worker/inline runs over the catalog."""

    def __init__(self, args: argparse.Namespace, redis_url: str) -> None:
        from django.conf import settings

        from visualsearch.storage.lookup import get_image_model

        self.args = args
        self.redis_url = redis_url
        self.model = get_image_model()
        self.media_root = Path(settings.MEDIA_ROOT)
        self.pgdata = Path(os.environ.get("VISUALSEARCH_PGDATA", BASE_DIR / ".pgdata")).resolve()
        self.logs = Path(tempfile.mkdtemp(prefix="bench-embed-logs-"))
        self.pks: list = []

    def env(self, threads: int | None) -> dict[str, str]:
        """Environment of worker and command subprocesses."""
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "VISUALSEARCH_DB_NAME": DATABASE,
            "MEDIA_ROOT": str(self.media_root),
            "CELERY_BROKER_URL": self.redis_url,
            "REDIS_URL": self.redis_url,
            "VISUALSEARCH_ENCODER": "efficientnet",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("VISUALSEARCH_ENCODER_THREADS", None)
        if threads:
            env["VISUALSEARCH_ENCODER_THREADS"] = str(threads)
        return env

    def prepare_catalog(self) -> dict[str, Any]:
        """Migrate and import the catalog (idempotent); pick the rows the runs embed."""
        from django.core.management import call_command

        clock = time.perf_counter()
        call_command("migrate", verbosity=0)
        with open(self.args.csv, encoding="utf-8-sig") as handle:
            wanted = sum(1 for line in handle if line.strip()) - 1  # one image per data row
        if self.args.limit:
            wanted = min(wanted, self.args.limit)
        imported = self.model._base_manager.count() >= wanted
        if not imported:  # the import is idempotent, but checking 6,573 rows takes ~15 s
            limit = ["--limit", str(self.args.limit)] if self.args.limit else []
            call_command(
                "import_catalog",
                str(self.args.csv),
                "--defer-embedding",
                "--no-progress",
                *limit,
                stdout=io.StringIO(),
            )
        rows = self.model._base_manager.order_by("pk").values_list("pk", flat=True)
        self.pks = list(rows[: self.args.limit] if self.args.limit else rows)
        return {
            "rows": len(self.pks),
            "import_s": round(time.perf_counter() - clock, 1),
            "imported_before": imported,
        }

    def reset(self) -> float:
        """Every row back to ``pending`` without a vector; index rebuilt empty, vacuumed.

        All rows of the table, not only the benchmarked ones, so that a ``--limit`` run also
        starts from an empty HNSW index.
        """
        from django.db import connection
        from django.utils import timezone

        from visualsearch.models import EmbeddingStatus

        clock = time.perf_counter()
        self.model._base_manager.update(
            embedding=None,
            embedding_status=EmbeddingStatus.PENDING,
            embedding_model="",
            embedding_hash="",
            embedding_error="",
            embedded_at=None,
            embedding_updated_at=timezone.now(),
        )
        table = connection.ops.quote_name(self.model._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"REINDEX TABLE {table}")  # drop index entries of the old vectors
            cursor.execute(f"VACUUM (ANALYZE) {table}")
        return time.perf_counter() - clock

    def counts(self) -> dict[str, int]:
        from django.db.models import Count

        rows = (
            self.model._base_manager.filter(pk__lte=self.pks[-1])
            .values_list("embedding_status")
            .annotate(n=Count("pk"))
        )
        return dict(rows)

    def wait(self, started: float, process: Any = None) -> dict[str, Any]:
        """Poll the row counts until every row is ready or failed; rates from the samples."""
        total = len(self.pks)
        samples: list[tuple[float, int]] = [(0.0, 0)]
        timeout = max(120.0, total / 5)
        while True:
            counts = self.counts()
            done = counts.get("ready", 0)
            elapsed = time.perf_counter() - started
            samples.append((elapsed, done))
            if done + counts.get("failed", 0) >= total:
                break
            if elapsed > timeout or (process is not None and process.poll() not in (None, 0)):
                return {"error": f"stopped after {elapsed:.0f}s with {counts}", "counts": counts}
            time.sleep(0.2)
        return {
            "seconds": round(elapsed, 2),
            "images_per_s": round(total / elapsed, 1),
            "steady_images_per_s": steady_rate(samples, total),
            "window_images_per_s": window_rate(samples),
            "failed": counts.get("failed", 0),
        }

    def process_roots(self) -> dict[str, int]:
        roots = {}
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            roots["postgres"] = int(pid_file.read_text().split()[0])
        return roots

    def worker_run(
        self,
        pool: str,
        concurrency: int,
        threads: int,
        batch: int,
        redis_pid: int,
    ) -> dict[str, Any]:
        """Start a worker, reset the rows, enqueue them, time until all are ready, stop it."""
        from visualsearch.ingest.tasks import enqueue

        label = f"{pool}-c{concurrency}-t{threads}-b{batch}"
        log = self.logs / f"worker-{label}.log"
        command = [
            sys.executable, "-m", "celery", "-A", "shop", "worker", "--loglevel=info",
            f"--pool={pool}", f"--concurrency={concurrency}", "-n", f"bench-{label}@%h",
        ]  # fmt: skip
        reset_s = self.reset()
        with open(log, "w") as handle:
            process = subprocess.Popen(
                command,
                cwd=BASE_DIR,
                env=self.env(threads),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        result: dict[str, Any] = {
            "pool": pool,
            "concurrency": concurrency,
            "threads": threads,
            "batch": batch,
            "command": f"VISUALSEARCH_ENCODER_THREADS={threads} celery -A shop worker "
            f"--pool={pool} --concurrency={concurrency}",
            "write_path": "app _write",
            "reset_s": round(reset_s, 1),
        }
        try:
            clock = time.perf_counter()
            loaded = 0
            while True:  # ready, and every pool process has loaded the encoder
                text = log.read_text()
                loaded = len(re.findall(r"visualsearch: .* loaded", text))
                if "ready." in text and loaded >= concurrency:
                    break
                if process.poll() is not None or time.perf_counter() - clock > 90:
                    raise RuntimeError(f"worker did not start:\n{text[-3000:]}")
                time.sleep(0.1)
            result["start_s"] = round(time.perf_counter() - clock, 1)
            meter = CpuMeter({"worker": process.pid, "redis": redis_pid, **self.process_roots()})
            started = time.perf_counter()
            sent = enqueue(self.model, self.pks, force=True, batch_size=batch)
            result["enqueue_s"] = round(time.perf_counter() - started, 2)
            if sent != len(self.pks):
                raise RuntimeError(f"enqueued {sent} of {len(self.pks)}")
            result.update(self.wait(started, process))
            result.update(meter.stop(len(self.pks)))
        except RuntimeError as exc:
            result["error"] = str(exc)
        finally:
            stop(process)
        return result

    def inline_run(self, batch: int) -> dict[str, Any]:
        """``manage.py visualsearch_reindex --all --batch-size N`` (encoder threads: default).

        With ``--limit`` the rows outside the benchmarked ones are marked ``failed`` and the
        command runs without ``--all`` (it embeds the pending rows), so it embeds the same rows.
        """
        from visualsearch.models import EmbeddingStatus

        reset_s = self.reset()
        selection = ["--all"]
        if self.args.limit:
            self.model._base_manager.filter(pk__gt=self.pks[-1]).update(
                embedding_status=EmbeddingStatus.FAILED, embedding_error="outside --limit"
            )
            selection = ["--missing"]
        command = [
            sys.executable, "manage.py", "visualsearch_reindex", *selection,
            "--batch-size", str(batch), "--no-progress",
        ]  # fmt: skip
        log = self.logs / f"inline-b{batch}.log"
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_before = used.ru_utime + used.ru_stime
        with open(log, "w") as handle:
            started = time.perf_counter()
            process = subprocess.Popen(
                command, cwd=BASE_DIR, env=self.env(None), stdout=handle, stderr=subprocess.STDOUT
            )
        meter = CpuMeter(self.process_roots())
        result: dict[str, Any] = {
            "command": " ".join(["manage.py", *command[2:-1]]),
            "batch": batch,
            "reset_s": round(reset_s, 1),
        }
        result.update(self.wait(started, process))
        process.wait()
        result["process_s"] = round(time.perf_counter() - started, 2)
        result["note"] = "seconds/images_per_s include Django start-up and the encoder load"
        result.update(meter.stop(len(self.pks)))
        # The command is reaped by now: its CPU time is in this process's children usage.
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = used.ru_utime + used.ru_stime - children_before
        result["cpu_s_per_1000_images"]["command"] = round(seconds * 1000 / len(self.pks), 2)
        result["other_processes_cpu_s"] = round(result["other_processes_cpu_s"] - seconds, 1)
        return result
