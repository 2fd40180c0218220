"""The remote encoder against a real KServe v2 model server (visualsearch.contrib.kserve_model,
started as a subprocess on a free port), and against a scripted HTTP server for bad answers."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from shop.catalog.models import ProductImage
from tests import services
from tests.conftest import make_image_bytes
from visualsearch.encoders import get_encoder
from visualsearch.encoders.remote import (
    KServeV2Encoder,
    RemoteEncoderError,
    RemoteEncoderUnavailable,
    query_encoder,
)
from visualsearch.ingest.pipeline import embed_images
from visualsearch.ingest.tasks import embed_images_task

BASE_DIR = Path(__file__).resolve().parents[2]
IMAGE_URL = "/api/search/image/"
needs_kserve = pytest.mark.skipif(
    importlib.util.find_spec("kserve") is None, reason="kserve is not installed (dev extra)"
)


class KServeProcess:
    """``python -m visualsearch.contrib.kserve_model`` serving the suite's tiny CLIP."""

    def __init__(self, log: Path) -> None:
        self.port, self.log = services.free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> KServeProcess:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": services.database_url(django_settings.DATABASES["default"]),
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "visualsearch.contrib.kserve_model"]
        command += ["--http_port", str(self.port), "--enable_grpc", "false"]
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(
                command, cwd=BASE_DIR, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        probe = KServeV2Encoder(self.url, connect_timeout=0.5, timeout=2)
        deadline = time.monotonic() + timeout
        while not probe.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the KServe server did not start:\n{self.tail()}")
            time.sleep(0.2)
        return self

    def infer_requests(self) -> int:
        return self.log.read_text().count("POST /v2/models/visualsearch/infer")

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def kserve(tmp_path_factory):
    server = KServeProcess(tmp_path_factory.mktemp("kserve") / "server.log").start()
    yield server
    server.kill()


@pytest.fixture(autouse=True)
def fresh_throttle():
    cache.clear()


def remote_settings(settings, url: str, **options) -> None:
    """QUERY_ENCODER "remote" on ``url``, with short time-outs."""
    remote = {"url": url, "timeout": 2.0, "connect_timeout": 0.5, "retries": 2, "backoff": 0.05}
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "QUERY_ENCODER": "remote",
        "REMOTE_ENCODER": {**remote, **options},
    }


def photos() -> list[Image.Image]:
    shapes = [("red", "circle", (120, 90)), ("blue", "square", (64, 64)), ("green", "stripes")]
    return [Image.open(io.BytesIO(make_image_bytes(*shape))).convert("RGB") for shape in shapes]


def photo_upload(color: str = "red") -> SimpleUploadedFile:
    return SimpleUploadedFile("q.jpg", make_image_bytes(color, "square"), "image/jpeg")


@pytest.fixture
def catalog(make_product):
    products = [make_product(color=color) for color in ["red", "blue", "green", "orange"]]
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return products


# --- the real KServe server ------------------------------------------------------------------


@needs_kserve
@pytest.mark.slow
def test_remote_vectors_equal_the_in_process_ones(kserve):
    local, remote = get_encoder(), KServeV2Encoder(kserve.url)
    assert remote.model_id == local.model_id and remote.dimensions == local.dimensions
    images = photos()
    difference = np.abs(remote.encode_images(images) - local.encode_images(images)).max()
    assert difference < 1e-5
    assert remote.supports_text
    texts = ["a red shirt", "blue stripes"]
    assert np.abs(remote.encode_texts(texts) - local.encode_texts(texts)).max() < 1e-5
    assert remote.encode_images([]).shape == (0, local.dimensions)


@needs_kserve
@pytest.mark.slow
@pytest.mark.django_db
def test_api_photo_search_through_the_remote_encoder(kserve, catalog, client, settings):
    local = client.post(IMAGE_URL, {"image": photo_upload()}).json()
    remote_settings(settings, kserve.url)
    before = kserve.infer_requests()
    response = client.post(IMAGE_URL, {"image": photo_upload()})
    assert response.status_code == 200, response.content
    assert response.json()["results"], "no results"
    assert [r["id"] for r in response.json()["results"]] == [r["id"] for r in local["results"]]
    assert kserve.infer_requests() > before  # the photo went to the server
    assert isinstance(query_encoder(), KServeV2Encoder)


WEB_PROCESS = """
import io, json, sys
import django
django.setup()
from PIL import Image
from visualsearch.encoders.remote import query_encoder
from visualsearch.query import search_by_image
found = search_by_image(Image.new("RGB", (80, 60), "red"), 3)
print(json.dumps({"results": len(found), "encoder": repr(query_encoder()),
                  "torch": "torch" in sys.modules, "onnx": "onnxruntime" in sys.modules}))
"""


@needs_kserve
@pytest.mark.slow
def test_a_web_process_with_remote_encoding_never_imports_torch(kserve, transactional_db, catalog):
    from tests.conftest import database_url

    remote = {"QUERY_ENCODER": "remote", "REMOTE_ENCODER": {"url": kserve.url}}
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "VISUALSEARCH_TEST_ENCODER": json.dumps(remote),
    }
    before = kserve.infer_requests()
    done = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["results"] == 3 and "KServeV2Encoder" in answer["encoder"]
    assert answer["torch"] is False and answer["onnx"] is False
    assert kserve.infer_requests() > before


@needs_kserve
@pytest.mark.slow
@pytest.mark.django_db
def test_server_killed_api_and_search_page_answer_503(catalog, client, settings, tmp_path, caplog):
    server = KServeProcess(tmp_path / "server.log").start()
    try:
        remote_settings(settings, server.url)
        assert client.post(IMAGE_URL, {"image": photo_upload()}).status_code == 200
    finally:
        server.kill()
    started = time.monotonic()
    response = client.post(IMAGE_URL, {"image": photo_upload()})
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.content
    assert response.json()["detail"] == (
        "Search is unavailable right now (the image encoder cannot be reached): try again in a "
        "moment."
    )
    assert response["Retry-After"] == "10"
    assert elapsed < 3.0, elapsed  # refused at once: three tries and their backoff
    page = client.post("/search/", {"image": photo_upload()})
    assert page.status_code == 503
    assert "Search is unavailable right now (the image encoder cannot be" in page.content.decode()
    # The details (the internal URL, the error) go to the log, not to the shopper.
    assert f"{server.url} (model 'visualsearch') is unavailable after 3 tries" in caplog.text
    assert server.url not in response.content.decode() + page.content.decode()


@needs_kserve
@pytest.mark.slow
@pytest.mark.django_db
def test_worker_task_retries_while_the_endpoint_is_down(kserve, make_product, settings, caplog):
    dead = f"http://127.0.0.1:{services.free_port()}"
    options = {"dimensions": 32, "connect_timeout": 0.5, "retries": 0}
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.remote.KServeV2Encoder",
        "ENCODER_OPTIONS": {"url": dead, **options},
        "TASK_MAX_RETRIES": 2,
        "TASK_RETRY_BACKOFF_MAX": 0,
    }
    image = make_product(color="purple").images.get()
    with caplog.at_level(logging.WARNING):
        outcome = embed_images_task.apply(args=("catalog", "productimage", [image.pk]))
    assert outcome.state == "FAILURE" and isinstance(outcome.result, RemoteEncoderUnavailable)
    assert len([r for r in caplog.records if "transient error" in r.getMessage()]) == 2
    row = ProductImage.objects.get(pk=image.pk)
    assert row.embedding_status == "pending" and row.embedding_attempts == 0  # not failed
    # The endpoint is back: the next delivery embeds it with the served model's id.
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER_OPTIONS": {"url": kserve.url, **options},
    }
    assert (
        embed_images_task.apply(args=("catalog", "productimage", [image.pk]))
        .get()
        .startswith("1 embedded")
    )
    row = ProductImage.objects.get(pk=image.pk)
    assert row.embedding_status == "ready"
    assert row.embedding_model.startswith("clip:tiny-clip-32:")


# --- a scripted server: time-outs, retries and bad answers ----------------------------------


class Scripted(BaseHTTPRequestHandler):
    """Metadata of a 32-d model; infer answers as ``script`` (a list of callables) says."""

    script: list = []
    requests: list = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.requests.append(self.path)
        outputs = [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, 32]}]
        self._send(200, {"name": "visualsearch", "inputs": [], "outputs": outputs})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(self.path)
        count = body["inputs"][0]["shape"][0]
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self._send(*step(count))


def answer(rows: int | None = None, size: int = 32, model_id: str = "clip:tiny"):
    def step(count: int):
        shape = [count if rows is None else rows, size]
        data = [0.1] * (shape[0] * size)
        output = {"name": "EMBEDDING", "datatype": "FP32", "shape": shape, "data": data}
        return 200, {"outputs": [output], "parameters": {"model_id": model_id}}

    return step


def failing(status: int):
    return lambda count: (status, {"error": "model crashed"})


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scripted.requests = []
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def scripted_encoder(url: str, *script, **options) -> KServeV2Encoder:
    Scripted.script = list(script)
    return KServeV2Encoder(url, retries=2, backoff=0.01, **options)


def test_5xx_answers_are_retried_then_succeed(scripted):
    _server, url = scripted
    encoder = scripted_encoder(url, answer(), failing(503), failing(500), answer())
    assert encoder.model_id == "clip:tiny"
    assert encoder.encode_images(photos()[:2]).shape == (2, 32)
    assert len([path for path in Scripted.requests if path.endswith("/infer")]) == 4


def test_5xx_every_time_is_unavailable_and_a_4xx_is_not_retried(scripted):
    _server, url = scripted
    encoder = scripted_encoder(url, answer(), failing(500))
    with pytest.raises(RemoteEncoderUnavailable, match="after 3 tries: HTTP 500: model crashed"):
        encoder.encode_images(photos()[:1])
    encoder = scripted_encoder(url, answer(), failing(400))
    Scripted.requests = []
    with pytest.raises(RemoteEncoderError, match="answered 400: model crashed") as raised:
        encoder.encode_images(photos()[:1])
    assert not isinstance(raised.value, RemoteEncoderUnavailable)
    assert len([path for path in Scripted.requests if path.endswith("/infer")]) == 2  # probe + 1


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (answer(size=16), r"returned vectors of shape \(1, 16\), expected 32-d rows"),
        (answer(rows=3), r"returned EMBEDDING of shape \[3, 32\] for 1 input"),
        (answer(model_id="clip:other"), "now serves 'clip:other', not 'clip:tiny'"),
        (lambda count: (200, {"outputs": []}), "no usable EMBEDDING tensor"),
    ],
    ids=["dimension", "row-count", "other-model", "no-output"],
)
def test_bad_answers_raise_a_clear_error(scripted, step, message):
    _server, url = scripted
    encoder = scripted_encoder(url, answer(), step)
    with pytest.raises(RemoteEncoderError, match=message):
        encoder.encode_images(photos()[:1])


def test_metadata_of_another_size_than_the_option(scripted):
    _server, url = scripted
    with pytest.raises(RemoteEncoderError, match="returns 32-d vectors, not 64"):
        scripted_encoder(url, answer(), dimensions=64).warm_up()


def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections (the backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        encoder = KServeV2Encoder(
            f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3, retries=1, backoff=0.05
        )
        started = time.monotonic()
        with pytest.raises(RemoteEncoderUnavailable, match="timed out"):
            encoder.encode_images(photos()[:1])
        assert time.monotonic() - started < 2.0


@pytest.mark.django_db
def test_api_answers_503_when_the_endpoint_serves_another_model(
    scripted, catalog, client, settings, caplog
):
    _server, url = scripted
    Scripted.script = [answer(model_id="clip:other")]
    remote_settings(settings, url)
    response = client.post(IMAGE_URL, {"image": photo_upload()})
    assert response.status_code == 503
    assert "(the image encoder is misconfigured)" in response.json()["detail"]
    assert "serves 'clip:other', but the vectors searched are 'clip:tiny-clip-32:" in caplog.text


@pytest.mark.django_db
def test_api_answers_503_when_nothing_listens(catalog, client, settings):
    remote_settings(settings, f"http://127.0.0.1:{services.free_port()}")
    started = time.monotonic()
    response = client.post(IMAGE_URL, {"image": photo_upload()})
    assert response.status_code == 503 and "cannot be reached" in response.json()["detail"]
    assert time.monotonic() - started < 3.0


@pytest.mark.django_db
def test_settings_are_checked(settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "QUERY_ENCODER": "remote"}
    with pytest.raises(ImproperlyConfigured, match="REMOTE_ENCODER"):
        query_encoder()
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "QUERY_ENCODER": "gpu"}
    with pytest.raises(ImproperlyConfigured, match="QUERY_ENCODER"):
        query_encoder()
    with pytest.raises(ImproperlyConfigured, match="not http"):
        KServeV2Encoder("gpu-1:8080")
