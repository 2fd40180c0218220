"""The relevance cut-off through the API (``?cutoff=``) and the similar-products tag."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from django.core.cache import cache
from django.template import Context, Template
from rest_framework.test import APIClient

from shop.catalog.models import Product, ProductImage
from tests.api.test_api import (  # noqa: F401  (fixtures)
    IMAGE_URL,
    TEXT_URL,
    error_messages,
    similar_url,
    upload,
    vary,
)
from tests.conftest import make_image_bytes, ready_images

pytestmark = pytest.mark.django_db

#: Similarities of the other products to the query product: three look-alikes, then a drop.
NEAR = [0.98, 0.97, 0.96]
FAR = [0.50 - 0.01 * i for i in range(9)]


@pytest.fixture(autouse=True)
def fresh_throttle():
    """Throttle counters and cached widgets of earlier tests live in Redis: start afresh."""
    cache.clear()


@pytest.fixture
def client():
    return APIClient()


def unit(dimensions: int, similarity: float, axis: int) -> np.ndarray:
    """A unit vector with cosine ``similarity`` to the first axis, the rest along ``axis``."""
    vector = np.zeros(dimensions, dtype=np.float32)
    vector[0] = similarity
    vector[axis] = np.sqrt(1.0 - similarity**2)
    return vector


@pytest.fixture
def catalog(category):
    """The query product (first) and 12 others at the ``NEAR`` + ``FAR`` similarities, each
    with one ready image vector written directly (no encoding)."""
    dimensions = ProductImage._meta.get_field("embedding").dimensions
    labels = ["query"] + [f"near {i}" for i in range(len(NEAR))]
    labels += [f"far {i}" for i in range(len(NEAR), len(NEAR) + len(FAR))]
    products = [
        Product.objects.create(
            name=label, slug=f"cutoff-{i}", category=category, price=Decimal("10.00")
        )
        for i, label in enumerate(labels)
    ]
    vectors = [unit(dimensions, s, i + 1) for i, s in enumerate([1.0, *NEAR, *FAR])]
    ready_images(products, vectors=np.stack(vectors))
    return products


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == len(body["results"])
    return [row["name"] for row in body["results"]]


def test_without_cutoff_the_list_is_limit_long(client, catalog):
    found = names(client.get(similar_url(catalog[0].pk), {"limit": 10}))
    assert len(found) == 10
    assert found[:3] == ["near 0", "near 1", "near 2"]


@pytest.mark.parametrize("cutoff", ["0.9", "ratio:0.9", "gap:1", "stddev:1", "on"])
def test_cutoff_ends_the_list_at_the_drop(client, catalog, cutoff):
    response = client.get(similar_url(catalog[0].pk), {"limit": 10, "cutoff": cutoff})
    assert names(response) == ["near 0", "near 1", "near 2"]
    scores = [row["score"] for row in response.json()["results"]]
    assert scores == pytest.approx(NEAR, abs=2e-3)


def test_cutoff_keeps_at_least_three_and_never_more_than_limit(client, catalog):
    # A ratio of 1 keeps only ties with the top hit: the floor of 3 results remains.
    assert len(names(client.get(similar_url(catalog[0].pk), {"cutoff": "1"}))) == 3
    assert names(client.get(similar_url(catalog[0].pk), {"limit": 2, "cutoff": "0.9"})) == [
        "near 0",
        "near 1",
    ]
    assert len(names(client.get(similar_url(catalog[0].pk), {"limit": 8, "cutoff": "0.4"}))) == 8


def test_the_setting_is_the_default_and_cutoff_off_overrides_it(client, catalog, settings):
    url = similar_url(catalog[0].pk)
    vary(settings, RELEVANCE_CUTOFF=0.9)
    assert len(names(client.get(url, {"limit": 10}))) == 3
    assert len(names(client.get(url, {"limit": 10, "cutoff": ""}))) == 3  # blank: the setting
    assert len(names(client.get(url, {"limit": 10, "cutoff": "off"}))) == 10
    vary(settings, RELEVANCE_CUTOFF={"rule": "ratio", "value": 0.9, "min_results": 5})
    assert len(names(client.get(url, {"limit": 10}))) == 5
    assert len(names(client.get(url, {"limit": 10, "cutoff": "stddev:1"}))) == 5  # its floor
    vary(settings, RELEVANCE_CUTOFF=None)
    assert len(names(client.get(url, {"limit": 10}))) == 10


@pytest.mark.parametrize(
    "value, message",
    [
        ("abc", "A cut-off is a ratio"),
        ("0", "above 0 and at most 1"),
        ("1.5", "above 0 and at most 1"),
        ("-1", "above 0 and at most 1"),
        ("nan", "finite number"),
        ("Infinity", "finite number"),
        ("gap:0", "above 0"),
        ("stddev:-2", "at least 0"),
        ("median:0.5", "Unknown cut-off rule"),
        ("ratio:", "A cut-off is a ratio"),
        ("0.9\x00", "A cut-off is a ratio"),
        ("9" * 60, "A cut-off is a ratio"),
    ],
)
def test_bad_cutoff_is_400_naming_the_parameter(client, catalog, value, message):
    response = client.get(similar_url(catalog[0].pk), {"cutoff": value})
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["cutoff"]
    assert message in error_messages(response)


def test_text_and_image_search_take_the_cutoff(client, catalog):
    # The tiny test CLIP's scores are arbitrary: a ratio of 1 leaves the floor of 3.
    assert len(names(client.get(TEXT_URL, {"q": "red", "limit": 10}))) == 10
    assert len(names(client.get(TEXT_URL, {"q": "red", "limit": 10, "cutoff": "1"}))) == 3
    response = client.get(TEXT_URL, {"q": "red", "cutoff": "ratio:7"})
    assert response.status_code == 400 and list(response.json()) == ["cutoff"]
    photo = make_image_bytes("red")
    found = client.post(IMAGE_URL, {"image": upload(photo), "limit": 10, "cutoff": "1"})
    assert len(names(found)) == 3
    found = client.post(IMAGE_URL, {"image": upload(photo), "limit": 10, "cutoff": "off"})
    assert len(names(found)) == 10
    response = client.post(IMAGE_URL, {"image": upload(photo), "cutoff": "sometimes"})
    assert response.status_code == 400 and list(response.json()) == ["cutoff"]


def test_recommendations_have_no_cutoff_parameter(client, settings):
    schema = client.get("/api/schema/", {"format": "json"}).json()
    parameters = {
        path: {p["name"] for p in operation["get"].get("parameters", [])}
        for path, operation in schema["paths"].items()
        if "get" in operation
    }
    assert "cutoff" in parameters["/api/products/{id}/similar/"]
    assert "cutoff" in parameters["/api/search/text/"]
    assert "cutoff" not in parameters["/api/recommendations/"]
    image = schema["components"]["schemas"]["ImageSearch"]["properties"]
    assert image["cutoff"]["type"] == "string"


def test_the_template_tag_takes_a_cutoff(catalog, settings):
    product = catalog[0]

    def render(source: str) -> str:
        return Template("{% load visualsearch %}" + source).render(Context({"product": product}))

    assert render("{% similar_products product limit=10 as items %}{{ items|length }}") == "10"
    cut = "{% similar_products product limit=10 cutoff=0.9 as items %}{{ items|length }}"
    assert render(cut) == "3"
    html = render('{% similar_products product limit=10 cutoff="gap:1" %}')
    assert "near 2" in html and "far" not in html
    # The setting is the tag's default too; the rendering cache keeps the two apart.
    html = render("{% similar_products product limit=10 %}")
    assert "far 3" in html
    vary(settings, RELEVANCE_CUTOFF="on")
    assert "far" not in render("{% similar_products product limit=10 %}")
    assert "far 3" in render('{% similar_products product limit=10 cutoff="off" %}')
    assert Product.objects.count() == 13
