"""``manage.py visualsearch_worker``: a real worker process started by the command, on the
session's Redis, consuming only the embedding queue, with the encoder loaded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from visualsearch.encoders import get_encoder
from visualsearch.encoders.clip import CLIPEncoder

BASE_DIR = Path(__file__).resolve().parents[2]
QUEUE = "vs-embed-test"


class CountingCLIPEncoder(CLIPEncoder):
    """The tiny CLIP (same vectors, same model id) that appends its process id to the file
    ``$VISUALSEARCH_TEST_LOAD_LOG`` each time it loads its weights."""

    def _load(self):
        with self._lock:
            if self._model is None:
                import torch
                from sentence_transformers import SentenceTransformer

                torch.set_num_threads(1)
                self._model = SentenceTransformer(str(self._local_dir), device=self.device)
                with open(os.environ["VISUALSEARCH_TEST_LOAD_LOG"], "a") as log:
                    log.write(f"{os.getpid()}\n")
        return self._model


def wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def start_command_worker(tmp_path: Path, *options: str) -> tuple[subprocess.Popen, Path, Path]:
    """``manage.py visualsearch_worker *options`` on the test database; returns once it
    consumes: the process, its log and the file of encoder loads."""
    from tests.conftest import database_url  # not at import: workers import this module early

    log, loads = tmp_path / "worker.log", tmp_path / "loads.txt"
    encoder = "tests.ingest.test_worker_command.CountingCLIPEncoder"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "PYTHONUNBUFFERED": "1",
        "VISUALSEARCH_TEST_ENCODER": json.dumps({"ENCODER": encoder, "QUEUE": QUEUE}),
        "VISUALSEARCH_TEST_LOAD_LOG": str(loads),
    }
    command = [sys.executable, "manage.py", "visualsearch_worker", *options]
    command += ["--hostname", f"command-{os.getpid()}@%h", "--"]
    command += ["--without-heartbeat", "--without-gossip", "--without-mingle"]
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=handle, stderr=subprocess.STDOUT
        )
    if not wait_for(lambda: "ready." in log.read_text() or process.poll() is not None):
        process.kill()
    if process.poll() is not None:
        pytest.fail(f"visualsearch_worker did not start:\n{log.read_text()[-3000:]}")
    return process, log, loads


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.slow
@pytest.mark.parametrize("pool", [["--pool", "solo"], ["--pool", "threads", "--concurrency", "2"]])
def test_command_worker_embeds_with_the_encoder_loaded_once(
    transactional_db, broker, tmp_path, make_product, settings, pool
):
    from shop.catalog.models import ProductImage

    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "QUEUE": QUEUE}
    process, log, loads = start_command_worker(tmp_path, *pool)
    try:
        text = log.read_text()
        assert "loaded in" in text.split("ready.")[0]  # warmed up before it consumed
        assert f".> {QUEUE}" in text and ".> celery " not in text  # the embedding queue only
        assert f"pool {pool[1]}" in text and "batches of 32 (BATCH_SIZE)" in text
        product = make_product(color="blue", images=2)  # enqueued on commit to QUEUE
        rows = ProductImage.objects.filter(product=product)
        done = wait_for(lambda: rows.filter(embedding_status="ready").count() == 2)
        assert done, log.read_text()[-3000:]
        assert {row.embedding_model for row in rows} == {get_encoder().model_id}
        # One load, in the worker's own process (no pool children), before any task.
        assert loads.read_text().split() == [str(process.pid)]
    finally:
        stop(process)


def test_prefork_is_refused():
    with pytest.raises(CommandError, match="invalid choice: 'prefork'"):
        call_command("visualsearch_worker", "--pool", "prefork")
    with pytest.raises(CommandError, match="use --pool threads"):
        call_command("visualsearch_worker", "--pool", "solo", "--concurrency", "4")
