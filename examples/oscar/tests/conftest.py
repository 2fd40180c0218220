"""Fixtures of the Oscar example: a catalogue of real photos in Oscar's own (unforked) models,
the session's Redis, and a real Celery worker process on the test database."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.core.files import File
from django.core.management import call_command
from django.db import connection

from tests import services  # the repository root is on sys.path (oscar_example.testsettings)

EXAMPLE_DIR = Path(__file__).resolve().parent.parent
PHOTOS = Path(
    os.environ.get(
        "OSCAR_EXAMPLE_PHOTOS", EXAMPLE_DIR.parent.parent.parent / "shared/data/fashion-products"
    )
)
# The first photos of a few article types, in the order of products.csv.
PHOTOS_PER_TYPE = 6
ARTICLE_TYPES = ("Tshirts", "Watches", "Casual Shoes", "Handbags", "Sunglasses")


def _read_photos() -> list[dict]:
    if not (PHOTOS / "products.csv").is_file():
        return []
    taken: dict[str, int] = {}
    photos = []
    with open(PHOTOS / "products.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            kind = row["articleType"]
            if kind in ARTICLE_TYPES and taken.get(kind, 0) < PHOTOS_PER_TYPE:
                path = PHOTOS / row["file"]
                if path.is_file():
                    taken[kind] = taken.get(kind, 0) + 1
                    photos.append({**row, "path": path})
    return photos


@pytest.fixture(scope="session")
def photos() -> list[dict]:
    """Rows of products.csv (with ``path``) for up to 30 real product photos."""
    rows = _read_photos()
    if not rows:
        pytest.skip(
            f"no product photos at {PHOTOS} (the fashion-products data set: products.csv and "
            "images/<id>.jpg; set OSCAR_EXAMPLE_PHOTOS to another copy)"
        )
    return rows


@pytest.fixture(scope="session")
def photos_dir(photos) -> Path:
    """The fashion-products folder (skips the test when it is missing)."""
    return PHOTOS


@pytest.fixture
def make_catalogue(db, photos) -> Callable[..., list]:
    """``make_catalogue(n, stock=True)``: ``n`` Oscar products, one real photo each, saved
    one by one as the dashboard saves them (so visualsearch's ``post_save`` handler runs),
    with a stock record priced 10.00, 11.00, … unless ``stock`` is false."""
    from oscar.apps.catalogue.models import Product, ProductClass, ProductImage
    from oscar.apps.partner.models import Partner, StockRecord

    def factory(n: int = 12, stock: bool = True) -> list:
        product_class, _ = ProductClass.objects.get_or_create(
            slug="clothing", defaults={"name": "Clothing"}
        )
        partner, _ = Partner.objects.get_or_create(name="Example partner")
        products = []
        for index, photo in enumerate(photos[:n]):
            product = Product.objects.create(
                product_class=product_class,
                title=photo["productDisplayName"],
                upc=f"fashion-{photo['id']}",
            )
            product.article_type = photo["articleType"]
            product.photo = photo["path"]
            with open(photo["path"], "rb") as handle:
                ProductImage.objects.create(
                    product=product, original=File(handle, name=f"{photo['id']}.jpg")
                )
            if stock:
                StockRecord.objects.create(
                    product=product,
                    partner=partner,
                    partner_sku=f"sku-{photo['id']}",
                    price=Decimal(10 + index),
                    num_in_stock=5,
                )
            products.append(product)
        return products

    return factory


@pytest.fixture
def embedded_catalogue(make_catalogue) -> list:
    """Twelve products whose photos are embedded inline (``visualsearch_reindex``, the
    command a shop runs once for what it already has), in the test's transaction."""
    products = make_catalogue(12)
    call_command("visualsearch_reindex", "--no-progress", verbosity=0)
    return products


@pytest.fixture
def broker() -> redis.Redis:
    """The session's Redis, emptied before the test: broker (db 0) and cache (db 1)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    cache = redis.Redis.from_url(settings.CACHES["default"]["LOCATION"])
    client.flushdb()
    cache.flushdb()
    yield client
    client.flushdb()
    cache.flushdb()


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    """Rendered widgets are cached in Redis: no test sees another test's pages."""
    from django.core.cache import cache

    cache.clear()


def database_url() -> str:
    """URL of the database the tests use right now (the test database)."""
    return services.database_url(connection.settings_dict)


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, tmp_path_factory):
    """A real ``celery -A oscar_example worker`` process on the session's Redis and the test
    database, started once for the session (tests that use it need ``transactional_db``)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    try:
        process = services.start_worker(
            "oscar_example", "oscar_example.testsettings", database_url(), log,
            cwd=EXAMPLE_DIR, name="oscar-example", timeout=90,
        )  # fmt: skip
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield process
    services.stop_worker(process)


@pytest.fixture
def worker(transactional_db, broker, celery_worker_process):
    """The session's worker, with an empty queue and committed data it can see."""
    return celery_worker_process


@pytest.fixture
def wait_for(worker) -> Callable[..., None]:
    """``wait_for(predicate, what, timeout=60)``: poll until true; else fail with the log."""

    def poll(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tail = worker.log.read_text()[-4000:]
                pytest.fail(f"timed out after {timeout} s waiting for {what}; worker log:\n{tail}")
            time.sleep(0.2)

    return poll
