"""visualsearch's REST API over Oscar's catalogue: search by photo, similar products, prices."""

from __future__ import annotations

from decimal import Decimal

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from oscar.apps.basket import middleware as basket_middleware
from oscar.apps.catalogue.models import Product
from oscar.apps.partner import strategy

SEARCH = "/api/search/image/"


def _upload(path, name: str = "query.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, path.read_bytes(), content_type="image/jpeg")


def test_search_by_photo_finds_the_oscar_product_first(client, embedded_catalogue):
    product = embedded_catalogue[5]

    response = client.post(SEARCH, {"image": _upload(product.photo), "limit": 5})

    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    results = response.json()["results"]
    assert len(results) == 5
    first = results[0]
    assert first["id"] == product.pk
    assert first["name"] == product.title  # PRODUCT_NAME_FIELD "title"
    assert first["url"] == f"http://testserver{product.get_absolute_url()}"
    assert first["thumbnail"].endswith(".jpg")
    assert first["score"] > 0.99
    # Oscar's price, from its strategy and the product's stock record (PRODUCT_PRICE).
    assert Decimal(first["price"]) == Decimal(15)
    scores = [result["score"] for result in results]
    assert scores == sorted(scores, reverse=True)


def test_search_refuses_a_file_that_is_not_an_image(client, embedded_catalogue):
    upload = SimpleUploadedFile("notes.jpg", b"this is not a photo", content_type="image/jpeg")

    response = client.post(SEARCH, {"image": upload})

    assert response.status_code == 400
    errors = response.json()
    assert errors["image"] and isinstance(errors["image"][0], str)


def test_search_without_an_image_says_so(client, embedded_catalogue):
    response = client.post(SEARCH, {"limit": 3})

    assert response.status_code == 400
    assert "image" in response.json()


def test_similar_products_endpoint_on_an_oscar_product(client, embedded_catalogue):
    product = embedded_catalogue[0]

    response = client.get(f"/api/products/{product.pk}/similar/", {"limit": 4})

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert len(results) == 4
    assert product.pk not in [result["id"] for result in results]
    prices = {p.pk: Decimal(10 + i) for i, p in enumerate(embedded_catalogue)}
    for result in results:
        assert Decimal(result["price"]) == prices[result["id"]]


def test_price_follows_the_strategy_of_the_request(client, embedded_catalogue, monkeypatch):
    """Oscar prices per request: BasketMiddleware puts the Selector's strategy on it, and the
    PRODUCT_PRICE hook asks that strategy (here Oscar's UK one: 20 % VAT included)."""

    class UKSelector:
        def strategy(self, request=None, user=None, **kwargs):
            return strategy.UK(request)

    monkeypatch.setattr(basket_middleware, "selector", UKSelector())
    product = embedded_catalogue[0]

    response = client.get(f"/api/products/{product.pk}/similar/", {"limit": 4})

    assert response.status_code == 200
    prices = {p.pk: Decimal(10 + i) * Decimal("1.2") for i, p in enumerate(embedded_catalogue)}
    for result in response.json()["results"]:
        assert Decimal(result["price"]) == prices[result["id"]]


def test_price_is_null_without_a_stock_record(client, make_catalogue):
    make_catalogue(4, stock=False)
    call_command("visualsearch_reindex", "--no-progress", verbosity=0)
    product = Product.objects.first()

    response = client.get(f"/api/products/{product.pk}/similar/", {"limit": 3})

    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3
    assert [result["price"] for result in results] == [None, None, None]


def test_products_oscar_hides_are_neither_found_nor_looked_up(client, embedded_catalogue):
    """PRODUCT_QUERYSET (visualsearch.contrib.oscar: browsable products) hides what Oscar
    hides: an unpublished product is not a result, and its similar products are a 404."""
    hidden = embedded_catalogue[5]
    hidden.is_public = False
    hidden.save()

    response = client.post(SEARCH, {"image": _upload(hidden.photo), "limit": 5})

    assert response.status_code == 200
    assert hidden.pk not in [result["id"] for result in response.json()["results"]]
    assert client.get(f"/api/products/{hidden.pk}/similar/").status_code == 404


def test_similar_products_cost_no_query_per_result(client, embedded_catalogue):
    """Stock records and product classes come with the products (base_queryset), not one
    query per result for the price hook: 2 results and 8 take as many queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    url = f"/api/products/{embedded_catalogue[0].pk}/similar/"
    counts = []
    for limit in (2, 8):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, {"limit": limit})
        assert len(response.json()["results"]) == limit
        counts.append(len(queries))
    assert counts[0] == counts[1], counts
