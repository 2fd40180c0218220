"""Enqueue bookkeeping: when a row was last sent (the sweep leaves it to its task meanwhile)
and how many tasks started for it (an image that kills the worker or makes the encoder raise
ends ``failed`` with the reason, never ``pending`` forever), and sending failed rows again
from the admin and the reindex command.

Real Postgres and Redis throughout; a real Celery worker (its settings module written by the
test: a child process gets no ``override_settings``) where the behaviour lives in one.
"""

from __future__ import annotations

import inspect
import os
import re
import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.management import call_command
from django.utils import timezone

from shop.catalog.models import Category, Product, ProductImage
from tests import services
from tests.conftest import BASE_DIR, database_url, make_image_bytes, queued_tasks
from visualsearch.encoders.clip import CLIPEncoder
from visualsearch.ingest.handlers import deferred_embedding
from visualsearch.ingest.tasks import embed_images_task, enqueue, sweep_pending
from visualsearch.models import EmbeddingStatus

FAILED, PENDING, READY, STALE = (
    EmbeddingStatus.FAILED,
    EmbeddingStatus.PENDING,
    EmbeddingStatus.READY,
    EmbeddingStatus.STALE,
)
POISON = "tests.ingest.test_bookkeeping.PoisonEncoder"
TASK = ("catalog", "productimage")
#: Generous: two cores shared with other test runs.
WORK_TIMEOUT = 240


class PoisonEncoder(CLIPEncoder):
    """The tiny CLIP with two poisons, told by the colour at the image's centre: red makes
    the process exit at once (as a segfault or the kernel's OOM killer would), blue makes
    the encoder raise."""

    def encode_images(self, images):
        for image in images:
            red, green, blue = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
            if red > 200 and green < 60 and blue < 60:
                os._exit(1)
            if blue > 200 and red < 60 and green < 60:
                raise RuntimeError("the encoder choked on a blue image")
        return super().encode_images(images)


class StorageSDKError(Exception):
    """A storage service's own exception class, not an ``OSError`` (as cloud SDKs raise)."""


class ServiceStorage(FileSystemStorage):
    """Files on disk behind a storage service: reads raise ``error`` while a test sets it."""

    error: Exception | None = None

    def open(self, name, mode="rb"):
        if self.error is not None and "r" in mode:
            raise self.error
        return super().open(name, mode)


WORKER_SETTINGS = """
from tests.settings import *  # noqa: F403
from tests.settings import VISUALSEARCH

VISUALSEARCH = {
    **VISUALSEARCH,
    "ENCODER": "bookkeeping_encoders.PoisonEncoder",
    "TASK_MAX_ATTEMPTS": 3,
    "TASK_RETRY_BACKOFF_MAX": 0,
}
"""


def wait_for(predicate, timeout: float = WORK_TIMEOUT, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    return None


def row(pk) -> ProductImage:
    return ProductImage.objects.get(pk=pk)


def failed_row(pk) -> ProductImage | None:
    return ProductImage.objects.filter(pk=pk, embedding_status=FAILED).first()


def quiet_images(count: int = 1, color: str = "green") -> list[int]:
    """``count`` pending images, nothing enqueued."""
    category, _ = Category.objects.get_or_create(slug="bk", defaults={"name": "Bookkeeping"})
    pks = []
    with deferred_embedding():
        for _ in range(count):
            n = Product.objects.count() + 1
            product = Product.objects.create(name=f"bk {n}", slug=f"bk-{n}", category=category)
            data = make_image_bytes(color)
            image = ProductImage(product=product, image=ContentFile(data, name=f"bk-{n}.jpg"))
            image.save()
            pks.append(image.pk)
    return pks


@pytest.fixture
def poison_worker(transactional_db, broker, tmp_path, monkeypatch):
    """A real worker with :class:`PoisonEncoder`, ``TASK_MAX_ATTEMPTS`` 3 and no retry delay
    (the shop's settings: acks late, rejected and redelivered when the pool process dies)."""
    (tmp_path / "bookkeeping_settings.py").write_text(WORKER_SETTINGS)
    # The encoder is imported while visualsearch's models are being defined (the vector
    # size): its own module, then, without this one's imports of models.
    (tmp_path / "bookkeeping_encoders.py").write_text(
        "import os\n\nfrom visualsearch.encoders.clip import CLIPEncoder\n\n\n"
        + inspect.getsource(PoisonEncoder)
    )
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{path}" if path else str(tmp_path))
    try:
        process = services.start_worker(
            "shop", "bookkeeping_settings", database_url(), tmp_path / "worker.log",
            cwd=BASE_DIR, name="bookkeeping", timeout=WORK_TIMEOUT,
        )  # fmt: skip
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield process
    services.stop_worker(process)


# --- what was sent when -----------------------------------------------------------------------


@pytest.mark.django_db
def test_enqueue_stamps_the_rows_it_sent_and_not_those_it_could_not(broker):
    from tests.infra.test_faults import app_broker

    pks = quiet_images(3)
    assert set(ProductImage.objects.values_list("embedding_queued_at", flat=True)) == {None}
    before = timezone.now()
    assert enqueue(ProductImage, pks[:2], batch_size=1) == 2
    after = timezone.now()
    assert len(queued_tasks(broker)) == 2
    for pk in pks[:2]:
        assert before <= row(pk).embedding_queued_at <= after
    with app_broker(f"redis://127.0.0.1:{services.free_port()}/0"):
        assert enqueue(ProductImage, pks[2:]) == 0  # the broker is down: nothing sent
    assert row(pks[2]).embedding_queued_at is None  # so the sweep sends it later


@pytest.mark.django_db
def test_the_sweep_leaves_rows_queued_recently_to_their_task(broker, settings):
    """Pending and stale rows queued a second ago are waiting in the queue: not sent again;
    those never queued, queued long ago, or whose status changed after their task was sent
    (ready, then stale after an encoder change) are. A second sweep sends nothing."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "SWEEP_PENDING_AFTER": 120}
    now = timezone.now()
    hour_ago, second_ago = now - timedelta(hours=1), now - timedelta(seconds=1)
    states = {
        "pending, queued 1 s ago": (PENDING, hour_ago, second_ago),
        "stale, queued 1 s ago": (STALE, hour_ago, second_ago),
        "pending, queued long ago": (PENDING, hour_ago, now - timedelta(minutes=30)),
        "stale, queued long ago": (STALE, hour_ago, now - timedelta(minutes=30)),
        "pending, never queued": (PENDING, hour_ago, None),
        "stale since its task was sent": (STALE, second_ago, now - timedelta(seconds=5)),
    }
    pks = dict(zip(states, quiet_images(len(states)), strict=True))
    for name, (status, changed, queued) in states.items():
        ProductImage.objects.filter(pk=pks[name]).update(
            embedding_status=status, embedding_updated_at=changed, embedding_queued_at=queued
        )
    assert sweep_pending() == 4
    sent = {pk for task in queued_tasks(broker) for pk in task["args"][2]}
    assert sent == {pks[name] for name in states if "1 s ago" not in name}
    assert sweep_pending() == 0  # all of them are queued now


# --- attempts ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_image_that_kills_the_worker_fails_alone_after_its_attempts(poison_worker, broker):
    """The pool process dies on one image of a two-image batch, every time; the worker
    rejects the message and Redis hands it over again. After two deaths the batch is split,
    a row per task: the healthy image is embedded, the poison one dies once more (its third
    attempt) and the next delivery gives it up: ``failed`` with the reason, the message
    acknowledged, nothing redelivered any more."""
    poison, healthy = quiet_images(1, "red") + quiet_images(1, "green")
    assert enqueue(ProductImage, [poison, healthy]) == 2  # one task
    failed = wait_for(lambda: failed_row(poison))
    log = poison_worker.log.read_text
    assert failed, f"{row(poison).embedding_attempts} attempts\n{log()[-4000:]}"
    assert failed.embedding_error == "Gave up after 3 attempts: the worker died"
    assert failed.embedding_attempts == 3
    done = ProductImage.objects.filter(pk=healthy, embedding_status=READY, embedding_attempts=0)
    assert wait_for(done.exists), log()[-4000:]
    assert "split into 2 task(s): a worker died on this batch before" in log()
    assert "WorkerLostError" in log() or "exitcode 1" in log()
    # Three deliveries of the batch, two of the poison row's task, one of the healthy one's.
    assert wait_for(lambda: len(re.findall(r"embed_images\[[0-9a-f-]+\] succeeded", log())) == 3)
    time.sleep(2)
    assert broker.llen("celery") == 0 and broker.hlen("unacked") == 0
    assert len(re.findall(r"embed_images\[[0-9a-f-]+\] received", log())) == 6, log()[-4000:]


@pytest.mark.slow
def test_an_encoder_error_is_retried_then_recorded_as_failed(poison_worker, make_product):
    """A RuntimeError from the encoder: retried like a transient error (twice here), until
    the row has used its three attempts; then ``failed`` with the error, not pending."""
    image = make_product(color="blue").images.get()  # enqueued on commit
    failed = wait_for(lambda: failed_row(image.pk))
    log = poison_worker.log.read_text
    assert failed, f"{row(image.pk).embedding_status}\n{log()[-4000:]}"
    assert failed.embedding_error == (
        "Gave up after 3 attempts: RuntimeError: the encoder choked on a blue image"
    )
    assert failed.embedding_attempts == 3
    assert wait_for(lambda: "1 failed: RuntimeError" in log()), log()[-4000:]
    retries = re.findall(r"WARNING/ForkPoolWorker-\d+\] visualsearch: RuntimeError.* retry", log())
    assert len(retries) == 2, log()[-4000:]


@pytest.mark.django_db
def test_a_batch_workers_died_on_twice_is_split(broker):
    """What the third delivery of a batch finds after two deaths: attempts 2, no error. It
    sends each row alone and counts nothing; a single row is not split again."""
    pks = quiet_images(3)
    ProductImage.objects.filter(pk__in=pks[:2]).update(embedding_attempts=2)
    result = embed_images_task.apply(args=(*TASK, pks)).get()
    assert result == "split into 3 task(s): a worker died on this batch before"
    assert sorted(task["args"][2] for task in queued_tasks(broker)) == [[pk] for pk in pks]
    assert list(
        ProductImage.objects.order_by("pk").values_list("embedding_attempts", flat=True)
    ) == [2, 2, 0]
    assert embed_images_task.apply(args=(*TASK, pks[:1])).get().startswith("1 embedded")


@pytest.mark.django_db
def test_task_retries_bound_the_attempts_too(make_product, settings):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": POISON,
        "TASK_MAX_RETRIES": 1,
        "TASK_MAX_ATTEMPTS": 5,
    }
    image = make_product(color="blue").images.get()
    result = embed_images_task.apply(args=(*TASK, [image.pk])).get()  # retries run eagerly
    assert result == "1 failed: RuntimeError: the encoder choked on a blue image"
    failed = row(image.pk)
    assert failed.embedding_status == FAILED and failed.embedding_attempts == 2
    assert failed.embedding_error.startswith("Gave up after 2 attempts: RuntimeError: the enc")


@pytest.mark.django_db
def test_a_storage_sdk_error_counts_attempts_until_the_row_fails(
    make_product, settings, monkeypatch
):
    image = make_product().images.get()
    backend = "tests.ingest.test_bookkeeping.ServiceStorage"
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": backend}}
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "TASK_MAX_ATTEMPTS": 3,
        "TASK_RETRY_BACKOFF_MAX": 0,
    }
    monkeypatch.setattr(ServiceStorage, "error", StorageSDKError("AccessDenied by the service"))
    result = embed_images_task.apply(args=(*TASK, [image.pk])).get()
    assert result == "1 failed: StorageSDKError: AccessDenied by the service"
    failed = row(image.pk)
    assert failed.embedding_status == FAILED and failed.embedding_attempts == 3
    assert failed.embedding_error == (
        "Gave up after 3 attempts: StorageSDKError: AccessDenied by the service"
    )
    # Not processed again: another delivery leaves the row as it is.
    assert embed_images_task.apply(args=(*TASK, [image.pk])).get().endswith("0 failed, 0 gone")
    assert row(image.pk).embedding_attempts == 3


@pytest.mark.django_db
def test_transient_errors_give_their_attempt_back(make_product, settings, monkeypatch, broker):
    """Storage unreachable: retried, not counted, left pending for the sweep, which waits
    ``SWEEP_PENDING_AFTER`` from the last try (not from the first send) before sending it."""
    image = make_product().images.get()
    backend = "tests.ingest.test_bookkeeping.ServiceStorage"
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": backend}}
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "TASK_MAX_ATTEMPTS": 2,
        "TASK_MAX_RETRIES": 3,
        "TASK_RETRY_BACKOFF_MAX": 0,
    }
    monkeypatch.setattr(ServiceStorage, "error", ConnectionError("storage unreachable"))
    outcome = embed_images_task.apply(args=(*TASK, [image.pk]))
    assert outcome.state == "FAILURE" and isinstance(outcome.result, ConnectionError)
    waiting = row(image.pk)  # four runs, none counted: left to the sweep, as before
    assert waiting.embedding_status == PENDING and waiting.embedding_attempts == 0
    assert waiting.embedding_queued_at is not None  # each retry is a send
    assert waiting.embedding_queued_at > timezone.now() - timedelta(seconds=30)
    hour_ago = timezone.now() - timedelta(hours=1)
    ProductImage.objects.filter(pk=image.pk).update(embedding_updated_at=hour_ago)
    assert sweep_pending() == 0 and queued_tasks(broker) == []
    monkeypatch.setattr(ServiceStorage, "error", None)
    assert embed_images_task.apply(args=(*TASK, [image.pk])).get().startswith("1 embedded")
    assert row(image.pk).embedding_status == READY


@pytest.mark.django_db
def test_an_attempt_that_succeeds_starts_the_count_afresh(make_product):
    image = make_product().images.get()
    ProductImage.objects.filter(pk=image.pk).update(embedding_attempts=1)  # a worker died once
    assert embed_images_task.apply(args=(*TASK, [image.pk])).get().startswith("1 embedded")
    done = row(image.pk)
    assert done.embedding_status == READY and done.embedding_attempts == 0


@pytest.mark.django_db
def test_a_new_file_starts_the_attempts_afresh(make_product):
    image = make_product().images.get()
    ProductImage.objects.filter(pk=image.pk).update(
        embedding_status=FAILED, embedding_attempts=2, embedding_error="Gave up after 2 …"
    )
    image.refresh_from_db()
    image.image = ContentFile(make_image_bytes("blue", "circle"), name="replaced.jpg")
    image.save()
    saved = row(image.pk)
    assert (saved.embedding_status, saved.embedding_attempts, saved.embedding_error) == (
        PENDING,
        0,
        "",
    )


# --- sending failed rows again ------------------------------------------------------------------


def give_up(pk, attempts: int = 2) -> None:
    ProductImage.objects.filter(pk=pk).update(
        embedding_status=FAILED,
        embedding_attempts=attempts,
        embedding_error=f"Gave up after {attempts} attempts: the worker died",
    )


@pytest.mark.django_db(transaction=True)
def test_admin_retry_action_sends_failed_rows_again(admin_client, make_product, broker):
    from visualsearch.admin.mixins import ImageEmbeddingAdmin, retry_failed_selected
    from visualsearch.ingest.pipeline import embed_images

    failed, ready = quiet_images(1, "green") + quiet_images(1, "blue")
    embed_images([ready])
    give_up(failed)
    response = admin_client.post(
        "/admin/catalog/productimage/",
        {"action": "retry_failed_selected", "_selected_action": [failed, ready]},
        follow=True,
    )
    page = response.content.decode()
    assert "Enqueued 1 of 1 failed image(s) again. 1 not failed, left as they were." in page
    retried = row(failed)
    assert (retried.embedding_status, retried.embedding_attempts, retried.embedding_error) == (
        PENDING,
        0,
        "",
    )
    assert retried.embedding_queued_at is not None
    assert row(ready).embedding_status == READY
    (task,) = queued_tasks(broker)
    assert task["task"] == "visualsearch.embed_images"
    assert task["args"] == [*TASK, [failed], False]
    assert embed_images_task.apply(args=task["args"]).get().startswith("1 embedded")
    assert row(failed).embedding_status == READY
    assert retry_failed_selected in ImageEmbeddingAdmin.actions  # visualsearch's own table


@pytest.mark.django_db
def test_reindex_failed_starts_the_attempts_afresh(broker):
    (pk,) = quiet_images(1)
    give_up(pk, attempts=5)
    out = StringIO()
    call_command("visualsearch_reindex", "--failed", "--enqueue", "--no-progress", stdout=out)
    assert "Enqueued 1 image(s)" in out.getvalue()
    retried = row(pk)
    assert (retried.embedding_status, retried.embedding_attempts, retried.embedding_error) == (
        PENDING,
        0,
        "",
    )
    (task,) = queued_tasks(broker)
    # Had the attempts stayed at 5, the task would give the row up again at once.
    assert embed_images_task.apply(args=task["args"]).get().startswith("1 embedded")
    assert row(pk).embedding_status == READY
