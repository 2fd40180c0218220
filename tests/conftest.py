"""Fixtures: catalog factories, Pillow-made images, the broker queue, a real Celery worker."""

from __future__ import annotations

import io
import itertools
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import redis
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from PIL import Image, ImageDraw

from shop.catalog.models import Category, Product, ProductImage
from tests import services

BASE_DIR = Path(__file__).resolve().parent.parent
SHARED_DATA = BASE_DIR.parent / "shared" / "data" / "fashion-products"
_counter = itertools.count(1)

#: Tests between two VACUUMs of the tables with an HNSW index (:func:`vacuum_hnsw_tables`).
VACUUM_EVERY = 20
_finished = itertools.count(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if next(_finished) % VACUUM_EVERY == 0:
        vacuum_hnsw_tables()


def vacuum_hnsw_tables() -> None:
    """VACUUM the test database's tables that have an HNSW index.

    Every test's rolled-back rows stay in the HNSW graph until a vacuum, and the suite writes
    the same vectors again and again (fixed seeds, the same drawn photos). pgvector's HNSW is
    not made for a graph of many identical vectors: the likely cause of two flaky failures in
    which a k-NN answer missed the exact match. A shop's autovacuum keeps up with its own
    churn; the suite's outpaces it.
    """
    import psycopg

    if connection.connection is None or not connection.settings_dict["NAME"].startswith("test"):
        return  # no test has opened the test database
    with psycopg.connect(connection.connection.info.dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT DISTINCT tablename FROM pg_indexes"
            " WHERE schemaname = current_schema() AND indexdef LIKE '%USING hnsw%'"
        ).fetchall()
        for (table,) in tables:
            conn.execute(f'VACUUM "{table}"')


PALETTE = [
    "red",
    "blue",
    "green",
    "orange",
    "purple",
    "black",
    "yellow",
    "cyan",
    "magenta",
    "brown",
]


def make_image_bytes(
    color: str = "red", shape: str = "square", size: tuple[int, int] = (96, 96), fmt: str = "JPEG"
) -> bytes:
    """A small product-like photo: a coloured shape on a white background."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w // 5, h // 5, 4 * w // 5, 4 * h // 5)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "stripes":
        for x in range(0, w, 12):
            draw.rectangle((x, 0, x + 5, h), fill=color)
    else:
        draw.rectangle(box, fill=color)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def ready_images(products: list, seed: int = 0, vectors: np.ndarray | None = None) -> np.ndarray:
    """One image per product with a ready random unit vector, written with ``bulk_create``
    (which skips signals, so the category copy is set here as bulk writers set it); returns
    the vectors in product order. ``vectors`` (unit rows, one a product) replaces the random
    ones drawn from ``seed``."""
    from visualsearch.encoders import get_encoder

    if vectors is None:
        dimensions = ProductImage._meta.get_field("embedding").dimensions
        vectors = np.random.default_rng(seed).standard_normal((len(products), dimensions))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ProductImage.objects.bulk_create(
        ProductImage(
            product=product,
            category=product.category,
            image=f"products/{product.pk}.jpg",
            embedding=vector,
            embedding_status="ready",
            embedding_model=get_encoder().model_id,
        )
        for product, vector in zip(products, vectors, strict=True)
    )
    return vectors


@pytest.fixture(autouse=True)
def _fresh_serving_reading(monkeypatch):
    """Each test reads the serving encoder generation anew (processes cache it for seconds).
    A cut-over in the test process itself need not wait for other processes' readings
    (``switch.GRACE``); in worker processes it does."""
    from visualsearch.encoders import serving
    from visualsearch.ingest import switch

    monkeypatch.setattr(switch, "GRACE", 0.0)
    serving.forget()
    yield
    serving.forget()


@pytest.fixture
def category(db):
    return Category.objects.create(name="Shirts", slug="shirts")


@pytest.fixture
def make_product(db, category):
    """``make_product(color=…, shape=…, images=1, **fields)``: a product with generated images."""

    def factory(color="red", shape="square", images=1, image_bytes=None, **fields):
        n = next(_counter)
        fields.setdefault("category", category)
        fields.setdefault("price", Decimal("19.90"))
        product = Product.objects.create(name=f"{color} {shape} {n}", slug=f"p-{n}", **fields)
        for position in range(images):
            data = image_bytes if image_bytes is not None else make_image_bytes(color, shape)
            ProductImage.objects.create(
                product=product,
                position=position,
                image=ContentFile(data, name=f"p{n}-{position}.jpg"),
            )
        return product

    return factory


@pytest.fixture
def broker():
    """The session's real Redis broker, emptied before the test."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def queued_tasks(client: redis.Redis, queue: str = "celery") -> list[dict]:
    """Decode the messages waiting in a Celery queue on Redis."""
    import base64
    import json

    tasks = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        tasks.append({"task": message["headers"]["task"], "args": body[0], "kwargs": body[1]})
    return tasks


def database_url() -> str:
    """URL of the database the tests use right now (the test database)."""
    return services.database_url(connection.settings_dict)


@pytest.fixture
def celery_worker_process(transactional_db, broker, tmp_path):
    """A real ``celery worker`` process on the session's Redis and the test database."""
    try:
        process = services.start_worker(
            "shop", "tests.settings", database_url(), tmp_path / "worker.log",
            cwd=BASE_DIR, name="test", timeout=60,
        )  # fmt: skip
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield process
    services.stop_worker(process)
