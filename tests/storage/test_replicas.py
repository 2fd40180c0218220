"""Read replicas with a real streaming standby (tests/storage/conftest.py): vector reads on
the standby, read-your-writes on the primary, fall-back when it is down or lagging."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connections, transaction
from django.http import JsonResponse
from django.test import override_settings
from django.urls import path

from shop.catalog.models import Category, Product, ProductImage
from shop.urls import urlpatterns as shop_urlpatterns
from tests.conftest import ready_images
from visualsearch.query import similar_products
from visualsearch.query.duplicates import candidate_links
from visualsearch.query.knn import nearest_products
from visualsearch.query.recommend import recommend
from visualsearch.storage import routing

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

ROUTER = "visualsearch.storage.routing.ReplicaRouter"
MIDDLEWARE = "visualsearch.web.pinning.PrimaryPinningMiddleware"
PIN = 1.0


def write_view(request):
    """Writes an image row, then answers which database its similar products came from."""
    product = Product.objects.get(pk=request.POST["product"])
    ProductImage.objects.filter(product=product).update(position=7)
    with VectorReads() as reads:
        similar_products(product, 3)
    return JsonResponse({"vector_reads": reads.aliases})


urlpatterns = [path("write/", write_view), *shop_urlpatterns]


class VectorReads:
    """Records which database alias ran each statement that reads vectors (k-NN ``<=>`` and
    ``<#>``, binary vectors ``vector_send``)."""

    def __init__(self) -> None:
        self.aliases: list[str] = []
        self._blocks = []

    def __enter__(self) -> VectorReads:
        for alias in ("default", "replica"):
            block = connections[alias].execute_wrapper(self._wrapper(alias))
            block.__enter__()
            self._blocks.append(block)
        return self

    def __exit__(self, *exc) -> None:
        for block in reversed(self._blocks):
            block.__exit__(*exc)

    def _wrapper(self, alias):
        def record(execute, sql, params, many, context):
            if any(marker in sql for marker in ("<=>", "<#>", "vector_send")):
                self.aliases.append(alias)
            return execute(sql, params, many, context)

        return record


def primary_lsn() -> str:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
        return cursor.fetchone()[0]


@pytest.fixture
def catalog(replica_alias, standby):
    """Twelve products with one ready image each, replayed on the standby."""
    category = Category.objects.create(name="Shirts", slug="shirts")
    products = [
        Product.objects.create(
            name=f"p{i}", slug=f"p-{i}", category=category, price=Decimal("10.00")
        )
        for i in range(12)
    ]
    vectors = ready_images(products, seed=3)
    standby.wait_replayed(primary_lsn())
    return products, vectors


@pytest.fixture
def routed(catalog):
    """The router and the pinning middleware on, with short windows for the tests."""
    cache.clear()  # rendered widgets of other tests
    routing.forget_states()
    visualsearch = {
        **settings.VISUALSEARCH,
        "READ_DATABASES": ["replica"],
        "PIN_PRIMARY_SECONDS": PIN,
        "REPLICA_CHECK_SECONDS": 0.1,
        # Generous: the shared test server's other databases make WAL for the standby too.
        "REPLICA_MAX_LAG_SECONDS": 30.0,
        "WIDGET_CACHE_TIMEOUT": 0,
    }
    with (
        override_settings(
            DATABASE_ROUTERS=[ROUTER],
            VISUALSEARCH=visualsearch,
            MIDDLEWARE=[*settings.MIDDLEWARE, MIDDLEWARE],
            ROOT_URLCONF=__name__,
        ),
        routing.request_scope(),  # the catalog's writes do not pin the test's thread
    ):
        yield catalog[0]
    routing.forget_states()


def test_vector_reads_hit_the_standby(routed, catalog, client):
    product = routed[0]
    with connections["replica"].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone()[0] is True  # the alias really is the standby
    with VectorReads() as reads:
        similar = similar_products(product, 5)
        found = nearest_products(catalog[1][1], 3)  # a photo search's k-NN
        recommended = recommend([p.pk for p in routed[:3]], 4)
        links = candidate_links(0.0, 3)  # near-duplicate candidates (admin, command)
        response = client.get(f"/api/products/{product.pk}/similar/?limit=5")
        page = client.get(f"/products/{product.slug}/")
    assert found[0].pk == routed[1].pk
    assert len(recommended) == 4 and links
    assert len(similar) == 5 and response.status_code == 200 and page.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [p.pk for p in similar]
    assert reads.aliases and set(reads.aliases) == {"replica"}
    # The same answer as the primary gives.
    with override_settings(DATABASE_ROUTERS=[]):
        assert [p.pk for p in similar_products(product, 5)] == [p.pk for p in similar]


def test_a_client_that_wrote_reads_from_the_primary_within_the_pin_window(routed, client):
    product = routed[0]
    response = client.post("/write/", {"product": product.pk})
    assert response.json()["vector_reads"] == ["default"]  # its own request, after the write
    assert "visualsearch_primary" in response.cookies
    with VectorReads() as reads:
        assert client.get(f"/api/products/{product.pk}/similar/").status_code == 200
    assert set(reads.aliases) == {"default"}  # the next request, within the window
    with VectorReads() as reads:  # another client was not pinned
        client.cookies.clear()
        client.get(f"/api/products/{product.pk}/similar/")
    assert set(reads.aliases) == {"replica"}
    client.post("/write/", {"product": product.pk})
    time.sleep(PIN + 1.05)  # the cookie holds whole seconds
    with VectorReads() as reads:
        client.get(f"/api/products/{product.pk}/similar/")
    assert set(reads.aliases) == {"replica"}


def test_a_thread_that_wrote_reads_from_the_primary_for_a_while(routed):
    product = routed[0]
    ProductImage.objects.filter(product=product).update(position=3)
    with VectorReads() as reads:
        similar_products(product, 3)
    assert reads.aliases == ["default"]
    time.sleep(PIN + 0.05)
    with VectorReads() as reads:
        similar_products(product, 3)
    assert reads.aliases == ["replica"]


def test_a_lagging_standby_is_skipped_until_it_catches_up(routed, standby):
    product = routed[0]
    lag_limit = override_settings(
        VISUALSEARCH={**settings.VISUALSEARCH, "REPLICA_MAX_LAG_SECONDS": 0.5}
    )
    with lag_limit, standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        while conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
            time.sleep(0.01)
        try:
            with routing.request_scope():  # the write would pin this thread
                Product.objects.filter(pk=product.pk).update(name="renamed")
            assert routing.replica_state("replica", fresh=True).usable  # just noticed
            time.sleep(0.7)
            state = routing.replica_state("replica", fresh=True)
            assert state.up and state.lag > 0.5 and not state.usable
            with VectorReads() as reads:
                assert len(similar_products(product, 3)) == 3
            assert reads.aliases == ["default"]
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
    standby.wait_replayed(primary_lsn())
    time.sleep(0.15)
    with VectorReads() as reads:
        similar_products(product, 3)
    assert reads.aliases == ["replica"]


def test_a_stopped_standby_falls_back_to_the_primary(routed, standby, client):
    product = routed[0]
    with VectorReads() as reads:
        similar_products(product, 3)
    assert reads.aliases == ["replica"]
    standby.stop()
    try:
        slow_checks = {**settings.VISUALSEARCH, "REPLICA_CHECK_SECONDS": 60.0}
        with override_settings(VISUALSEARCH=slow_checks):
            assert routing.replica_state("replica").up  # the last check, still believed
            with pytest.raises(OperationalError):  # the statement sent to it fails...
                similar_products(product, 3)
            assert not routing.replica_state("replica").up  # ...and it is left out at once
        with VectorReads() as reads:
            api = client.get(f"/api/products/{product.pk}/similar/?limit=3")
            page = client.get(f"/products/{product.slug}/")
        assert api.status_code == 200 and len(api.json()["results"]) == 3
        assert page.status_code == 200
        assert reads.aliases and set(reads.aliases) == {"default"}
        state = routing.replica_state("replica")
        assert not state.up and state.error
    finally:
        standby.start()
    routing.forget_states()
    with VectorReads() as reads:
        similar_products(product, 3)
    assert reads.aliases == ["replica"]


def test_writes_tasks_and_transactions_use_the_primary(routed):
    from shop.celery import app

    @app.task(name="tests.storage.test_replicas.reads_from")
    def reads_from():
        return ProductImage.objects.db

    image = ProductImage.objects.filter(product=routed[0]).get()
    assert image._state.db == "replica"
    with routing.request_scope():
        image.position = 5
        image.save(update_fields=["position"])  # loaded from the replica, saved on the primary
        assert image._state.db == "default"
        assert ProductImage.objects.get(pk=image.pk).position == 5  # pinned: the primary
    assert routing.write_alias(ProductImage.objects.all()) == "default"
    assert reads_from.apply().get() == "default"  # a task re-reads what it will write
    with transaction.atomic():
        assert ProductImage.objects.db == "default"
    assert ProductImage.objects.db == "replica"
    assert Product.objects.db == "default"  # not a vector table: the router has no say
    assert routing.ReplicaRouter().allow_migrate("replica", "catalog") is False


def test_without_read_databases_the_router_has_no_opinion():
    router = routing.ReplicaRouter()
    assert router.db_for_read(ProductImage) is None
    assert router.db_for_write(ProductImage) is None
    assert router.allow_migrate("default", "catalog") is None
    with override_settings(VISUALSEARCH={**settings.VISUALSEARCH, "READ_DATABASES": ["nope"]}):
        with pytest.raises(ImproperlyConfigured, match="'nope', which is not in DATABASES"):
            router.db_for_read(ProductImage)
