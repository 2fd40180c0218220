"""The demo shop served for the load test: a private Redis (broker and cache), gunicorn with
sync workers and an idle Celery worker, on loopback, as in production (DEBUG off)."""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import BASE_DIR
from bench.common.processes import stop, tree_cpu_seconds, tree_memory
from bench.common.server import free_port, production_env
from bench.load.traffic import send

#: The worker log's line for an encoder a pool process has loaded.
LOADED = re.compile(r"INFO/ForkPoolWorker-\d+\] visualsearch: .* loaded")


@dataclass
class Servers:
    base_url: str
    web: subprocess.Popen
    worker: subprocess.Popen
    web_log: Path
    worker_log: Path

    def wait_until_ready(self, encoders: int, timeout: float = 180) -> None:
        """gunicorn answers, and the worker has loaded its ``encoders`` (its warm-up)."""
        deadline = time.monotonic() + timeout
        while send(urllib.request.Request(f"{self.base_url}/api/schema/"))[0] != 200:
            if self.web.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"gunicorn did not start:\n{self.web_log.read_text()[-3000:]}")
            time.sleep(0.5)
        while len(LOADED.findall(self.worker_log.read_text())) < encoders:
            if self.worker.poll() is not None:
                sys.exit(f"the Celery worker stopped:\n{self.worker_log.read_text()[-3000:]}")
            time.sleep(0.5)

    def memory(self) -> dict[str, Any]:
        """RSS and PSS of the web and worker process trees."""
        return {"web": tree_memory(self.web.pid), "worker": tree_memory(self.worker.pid)}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds of the web and worker process trees so far."""
        return {"web": tree_cpu_seconds(self.web.pid), "worker": tree_cpu_seconds(self.worker.pid)}


@contextlib.contextmanager
def shop_servers(args: argparse.Namespace) -> Iterator[Servers]:
    """Redis, gunicorn (``--web-workers``) and a Celery worker, stopped on the way out."""
    from tests.services import RedisServer

    redis = RedisServer().start()
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="vs-load-"))
    env = production_env(
        throttle_rate=args.throttle_rate,
        threads=args.threads,
        CELERY_BROKER_URL=redis.url,
        REDIS_URL=redis.url,
        CACHE_URL=redis.url[:-1] + "1",
    )
    bin_dir = Path(sys.executable).parent
    web_log, worker_log = logs / "gunicorn.log", logs / "worker.log"
    web_command = [
        str(bin_dir / "gunicorn"), "shop.wsgi:application", "--bind", f"127.0.0.1:{port}",
        "--workers", str(args.web_workers), "--timeout", "120",
        "--access-logfile", str(logs / "access.log"),
    ]  # fmt: skip
    worker_command = [
        str(bin_dir / "celery"), "-A", "shop", "worker", "--loglevel=info", "--concurrency=1"
    ]  # fmt: skip
    with open(web_log, "w") as handle:
        web = subprocess.Popen(
            web_command, cwd=BASE_DIR, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    with open(worker_log, "w") as handle:
        worker = subprocess.Popen(
            worker_command, cwd=BASE_DIR, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    try:
        yield Servers(f"http://127.0.0.1:{port}", web, worker, web_log, worker_log)
    finally:
        stop(web)
        stop(worker)
        redis.stop()
