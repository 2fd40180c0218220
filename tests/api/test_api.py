"""The REST API over the shop's URLconf: similar products, search by photo and by description."""

from __future__ import annotations

import io
import logging
from decimal import Decimal

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.files.uploadedfile import SimpleUploadedFile
from drf_spectacular.validation import validate_schema
from PIL import Image
from rest_framework.test import APIClient

from shop.catalog.models import Category, Product, ProductImage
from tests.conftest import make_image_bytes
from tests.services import free_port
from visualsearch.encoders.base import BaseEncoder, l2_normalize
from visualsearch.ingest.images import fit_for_encoder
from visualsearch.ingest.pipeline import embed_images
from visualsearch.query.filters import InvalidFilter, filter_kwargs, get_filters

pytestmark = pytest.mark.django_db

IMAGE_URL = "/api/search/image/"
TEXT_URL = "/api/search/text/"
RESULT_FIELDS = {"id", "name", "url", "thumbnail", "price", "score"}


def similar_url(pk) -> str:
    return f"/api/products/{pk}/similar/"


@pytest.fixture(autouse=True)
def fresh_throttle():
    """Throttle counters of earlier tests live in the session's Redis: start from zero."""
    cache.clear()


@pytest.fixture
def client():
    return APIClient()


@pytest.fixture
def catalog(make_product):
    """Eight colours x two shapes, all embedded; circles are out of stock, squares cost 10."""
    products = []
    for color in ["red", "blue", "green", "orange", "purple", "black", "yellow", "cyan"]:
        for shape in ["square", "circle"]:
            products.append(
                make_product(
                    color=color,
                    shape=shape,
                    in_stock=shape == "square",
                    price=Decimal("10.00") if shape == "square" else Decimal("25.50"),
                )
            )
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return products


def vary(settings, **values):
    """Set VISUALSEARCH keys for one test (the settings object reloads on the change)."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, **values}


def upload(data: bytes, name: str = "photo.jpg", content_type: str = "image/jpeg"):
    return SimpleUploadedFile(name, data, content_type=content_type)


def png_bytes(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def product_photo(product: Product) -> Image.Image:
    """The decoded pixels the embedding pipeline saw for ``product``'s first image."""
    with product.images.first().image.open("rb") as handle:
        return Image.open(io.BytesIO(handle.read())).convert("RGB")


def error_messages(response) -> str:
    """Every message of a 400/404 body, joined (each must say something)."""
    body = response.json()
    assert body, body
    parts = []
    for value in body.values():
        parts.extend(value if isinstance(value, list) else [value])
    assert all(isinstance(part, str) and part.strip() for part in parts), body
    return " ".join(parts)


# --- similar products ------------------------------------------------------------------


def test_similar_products_returns_limit_results_with_every_field(client, catalog):
    product = catalog[0]
    response = client.get(similar_url(product.pk), {"limit": 5})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 5
    assert len(body["results"]) == 5
    ids = [row["id"] for row in body["results"]]
    assert product.pk not in ids
    assert len(set(ids)) == 5
    scores = [row["score"] for row in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= score <= 1.0 + 1e-6 for score in scores)
    by_id = {p.pk: p for p in catalog}
    for row in body["results"]:
        assert set(row) == RESULT_FIELDS
        found = by_id[row["id"]]
        assert row["name"] == found.name
        assert row["url"] == f"http://testserver{found.get_absolute_url()}"
        assert row["thumbnail"].startswith("http://testserver/media/products/")
        assert row["price"] == str(found.price)


def test_similar_products_default_limit_and_empty_filter_values(client, catalog, settings):
    vary(settings, API_DEFAULT_LIMIT=7)
    response = client.get(similar_url(catalog[0].pk), {"category": "", "bogus": "x"})
    assert response.status_code == 200, response.content
    assert response.json()["count"] == 7


def test_identical_photo_scores_one(client, catalog, make_product):
    twin = make_product(color="blue", shape="circle")
    embed_images(twin.images.values_list("pk", flat=True))
    best = client.get(similar_url(twin.pk), {"limit": 1}).json()["results"][0]
    assert best["name"].startswith("blue circle")
    assert best["score"] == pytest.approx(1.0, abs=1e-4)


def test_filters_narrow_the_results(client, catalog):
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    for product in catalog[:6]:
        product.category = shoes
        product.save()
    product = catalog[-1]
    cases = {
        "category": ({"category": "shoes"}, lambda p: p.category_id == shoes.pk, 6),
        "in_stock": ({"in_stock": "false"}, lambda p: not p.in_stock, 7),
        "max_price": ({"max_price": "10"}, lambda p: p.price <= 10, 8),
        "min_price": ({"min_price": "20.5"}, lambda p: p.price >= Decimal("20.5"), 7),
        "combined": ({"category": "shoes", "in_stock": "yes"}, lambda p: p.in_stock, 3),
    }
    for name, (params, check, expected) in cases.items():
        response = client.get(similar_url(product.pk), {**params, "limit": 50})
        assert response.status_code == 200, (name, response.content)
        rows = response.json()["results"]
        assert len(rows) == expected, name
        assert all(check(Product.objects.get(pk=row["id"])) for row in rows), name


@pytest.mark.parametrize(
    "params, name",
    [
        ({"in_stock": "maybe"}, "in_stock"),
        ({"max_price": "abc"}, "max_price"),
        ({"min_price": "NaN"}, "min_price"),
        ({"max_price": "Infinity"}, "max_price"),
        ({"category": "shoes\x00"}, "category"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "-3"}, "limit"),
        ({"limit": "51"}, "limit"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(client, catalog, params, name):
    response = client.get(similar_url(catalog[0].pk), params)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [name]
    assert error_messages(response)


def test_limit_is_capped_by_the_setting(client, catalog, settings):
    vary(settings, API_MAX_LIMIT=3)  # the default of 12 is capped too
    assert client.get(similar_url(catalog[0].pk)).json()["count"] == 3
    assert client.get(similar_url(catalog[0].pk), {"limit": 3}).status_code == 200
    response = client.get(similar_url(catalog[0].pk), {"limit": 4})
    assert response.status_code == 400
    assert "less than or equal to 3" in error_messages(response)


@pytest.mark.parametrize("pk", ["999999", "abc", "1.5", "-1", "99999999999999999999999", "%00"])
def test_unknown_or_malformed_product_is_404(client, catalog, pk):
    response = client.get(similar_url(pk))
    assert response.status_code == 404, response.content
    assert "no product" in response.json()["detail"]


def test_product_without_embedding_has_no_results(client, make_product):
    product = make_product()
    response = client.get(similar_url(product.pk))
    assert response.status_code == 200
    assert response.json() == {"count": 0, "results": []}


def test_similar_products_query_count(client, catalog, django_assert_max_num_queries):
    # product, its vectors, the k-NN query (in a transaction with SET LOCAL), the products,
    # their thumbnails; no query per result.
    with django_assert_max_num_queries(9):
        response = client.get(similar_url(catalog[0].pk), {"limit": 10})
    assert response.json()["count"] == 10


# --- search by image -------------------------------------------------------------------


def test_image_search_finds_the_same_photo(client, catalog):
    data = make_image_bytes("green", "circle")
    response = client.post(IMAGE_URL, {"image": upload(data), "limit": 4})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 4
    assert set(body["results"][0]) == RESULT_FIELDS
    assert body["results"][0]["name"].startswith("green circle")
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)


def test_image_search_applies_filters(client, catalog):
    data = make_image_bytes("green", "circle")
    response = client.post(IMAGE_URL, {"image": upload(data), "in_stock": "true", "limit": 50})
    assert response.status_code == 200, response.content
    rows = response.json()["results"]
    assert len(rows) == 8
    assert all("square" in row["name"] for row in rows)
    bad = client.post(IMAGE_URL, {"image": upload(data), "max_price": "cheap"})
    assert bad.status_code == 400
    assert list(bad.json()) == ["max_price"]


def two_products_photo(catalog) -> tuple[Image.Image, Product, Product]:
    """The red square's photo and the blue circle's side by side, as one 192x96 picture."""
    left, right = catalog[0], catalog[3]
    assert left.name.startswith("red square") and right.name.startswith("blue circle")
    picture = Image.new("RGB", (192, 96), "white")
    picture.paste(product_photo(left), (0, 0))
    picture.paste(product_photo(right), (96, 0))
    return picture, left, right


def test_crop_box_chooses_what_to_search_for(client, catalog):
    picture, left, right = two_products_photo(catalog)
    data = png_bytes(picture)
    for box, expected in [((0, 0), left), ((96, 0), right)]:
        crop = {"crop_x": box[0], "crop_y": box[1], "crop_width": 96, "crop_height": 96}
        response = client.post(
            IMAGE_URL, {"image": upload(data, "both.png", "image/png"), "limit": 1, **crop}
        )
        assert response.status_code == 200, response.content
        best = response.json()["results"][0]
        assert best["id"] == expected.pk
        assert best["score"] == pytest.approx(1.0, abs=1e-3)
    whole = client.post(IMAGE_URL, {"image": upload(data, "both.png", "image/png"), "limit": 1})
    assert whole.json()["results"][0]["score"] < 0.999


def test_crop_box_is_in_pixels_of_the_upright_photo(client, catalog):
    picture, left, _ = two_products_photo(catalog)
    stored = picture.transpose(Image.Transpose.ROTATE_90)  # 96x192, shown upright by EXIF
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    data = png_bytes(stored, exif=exif)
    crop = {"crop_x": 0, "crop_y": 0, "crop_width": 96, "crop_height": 96}
    response = client.post(IMAGE_URL, {"image": upload(data, "r.png", "image/png"), **crop})
    assert response.status_code == 200, response.content
    best = response.json()["results"][0]
    assert best["id"] == left.pk
    assert best["score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    "crop, field",
    [
        ({"crop_x": 0}, "non_field_errors"),  # partial box
        ({"crop_x": 0, "crop_y": 0, "crop_width": 50}, "non_field_errors"),
        ({"crop_x": -1, "crop_y": 0, "crop_width": 50, "crop_height": 50}, "crop_x"),
        ({"crop_x": 0, "crop_y": 0, "crop_width": 4, "crop_height": 50}, "crop_width"),
        ({"crop_x": 0, "crop_y": 0, "crop_width": 50, "crop_height": "tall"}, "crop_height"),
        ({"crop_x": 100, "crop_y": 0, "crop_width": 100, "crop_height": 50}, "non_field_errors"),
        ({"crop_x": 0, "crop_y": 90, "crop_width": 50, "crop_height": 50}, "non_field_errors"),
    ],
)
def test_bad_crop_box_is_400(client, catalog, crop, field):
    response = client.post(IMAGE_URL, {"image": upload(make_image_bytes()), **crop})
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert error_messages(response)


def bomb_png() -> bytes:
    """A 12 kB PNG that claims 100 million pixels."""
    return png_bytes(Image.new("1", (10_000, 10_000)), optimize=True)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not a picture at all", "not an image"),
        (make_image_bytes()[:300], "could not be decoded"),
        (bytes(range(256)) * 40, "not an image"),
        (bomb_png(), "pixels"),
    ],
    ids=["empty", "text", "truncated", "noise", "bomb"],
)
def test_broken_and_hostile_files_are_400(client, catalog, data, message):
    response = client.post(IMAGE_URL, {"image": upload(data)})
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["image"]
    assert message in error_messages(response)


@pytest.mark.parametrize("size", [(1, 1), (4000, 2), (2, 4000)])
def test_tiny_and_long_thin_photos_are_searched(client, catalog, size):
    response = client.post(IMAGE_URL, {"image": upload(png_bytes(Image.new("RGB", size)))})
    assert response.status_code == 200, response.content
    assert response.json()["count"] == 12


def test_query_photos_are_bounded_before_encoding():
    assert fit_for_encoder(Image.new("RGB", (40_000, 1))).size == (1024, 256)
    assert fit_for_encoder(Image.new("RGB", (3000, 2000))).size == (1024, 683)
    assert fit_for_encoder(Image.new("RGB", (5, 300))).size == (75, 300)
    assert fit_for_encoder(Image.new("RGB", (1, 1))).size == (1, 1)


def test_missing_image_and_image_that_is_not_a_file_are_400(client, catalog):
    missing = client.post(IMAGE_URL, {"limit": 3})
    assert missing.status_code == 400
    assert "No file was submitted" in error_messages(missing)
    text = client.post(IMAGE_URL, {"image": "a string, not a file"})
    assert text.status_code == 400
    assert "not a file" in error_messages(text)


def test_oversize_upload_is_400(client, catalog, settings):
    data = make_image_bytes(size=(400, 400))
    vary(settings, MAX_IMAGE_BYTES=len(data) - 1)
    response = client.post(IMAGE_URL, {"image": upload(data)})
    assert response.status_code == 400, response.content
    assert "larger than" in response.json()["image"][0]
    vary(settings, MAX_IMAGE_BYTES=len(data))
    assert client.post(IMAGE_URL, {"image": upload(data)}).status_code == 200


def test_too_many_pixels_is_400(client, catalog, settings):
    vary(settings, MAX_IMAGE_PIXELS=96 * 96 - 1)
    response = client.post(IMAGE_URL, {"image": upload(make_image_bytes())})
    assert response.status_code == 400
    assert "pixels" in response.json()["image"][0]


def test_bodies_django_refuses_are_400_not_500(client, catalog, settings):
    image = upload(make_image_bytes())
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post(IMAGE_URL, {"image": image, "category": "x" * 2000})
    assert response.status_code == 400, response.content
    assert "too large" in response.json()["detail"]
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000_000
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5
    many = {f"field{i}": "x" for i in range(10)}
    response = client.post(IMAGE_URL, {"image": upload(make_image_bytes()), **many})
    assert response.status_code == 400, response.content
    assert "too many" in response.json()["detail"]


def test_body_that_is_not_multipart_is_415_and_broken_multipart_400(client, catalog):
    json_body = client.post(IMAGE_URL, {"image": "x"}, format="json")
    assert json_body.status_code == 415
    assert "Unsupported media type" in json_body.json()["detail"]
    for content_type in ["multipart/form-data", "multipart/form-data; boundary=b"]:
        broken = client.generic("POST", IMAGE_URL, b"--nope\r\n\r\n", content_type=content_type)
        assert broken.status_code == 400, broken.content
        assert error_messages(broken)


# --- search by text --------------------------------------------------------------------


def test_text_search_with_clip(client, catalog):
    response = client.get(TEXT_URL, {"q": "a red square", "limit": 5, "in_stock": "true"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["count"] == 5
    for row in body["results"]:
        assert set(row) == RESULT_FIELDS
        assert "square" in row["name"]  # the in-stock ones
        assert -1.0 <= row["score"] <= 1.0


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * 1001}, "q"),
        ({"q": "red", "limit": "x"}, "limit"),
    ],
)
def test_text_search_bad_query_is_400(client, catalog, params, field):
    response = client.get(TEXT_URL, params)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]


class ImageOnlyEncoder(BaseEncoder):
    """A real encoder without a text tower: the image's 32-pixel thumbnail colours, 32-d."""

    dimensions = 32
    model_id = "test:colour-thumbnail"

    def encode_images(self, images):
        rows = [
            np.asarray(image.convert("L").resize((8, 4)), dtype=np.float32).ravel()
            for image in images
        ]
        return l2_normalize(np.stack(rows))


def test_text_search_without_text_tower_is_400_saying_why(client, catalog, settings):
    from visualsearch.models import EncoderGeneration

    EncoderGeneration.objects.all().delete()  # a shop that never served another encoder
    vary(settings, ENCODER="tests.api.test_api.ImageOnlyEncoder", ENCODER_OPTIONS={})
    response = client.get(TEXT_URL, {"q": "a red square"})
    assert response.status_code == 400, response.content
    detail = response.json()["detail"]
    assert "Search by text is not available" in detail
    assert "no text tower" in detail
    # The same encoder still searches by photo (nothing is embedded with it yet).
    photo = client.post(IMAGE_URL, {"image": upload(make_image_bytes())})
    assert photo.status_code == 200
    assert photo.json() == {"count": 0, "results": []}


# --- permissions and throttling --------------------------------------------------------


def test_throttle_answers_429_after_the_rate(client, catalog, settings):
    vary(settings, API_THROTTLE_RATE="3/minute")
    url = similar_url(catalog[0].pk)
    assert [client.get(url).status_code for _ in range(3)] == [200, 200, 200]
    response = client.get(url)
    assert response.status_code == 429
    assert "throttled" in response.json()["detail"]
    assert int(response["Retry-After"]) > 0
    # One budget for the whole API, per client: text search is refused too ...
    assert client.get(TEXT_URL, {"q": "red"}).status_code == 429
    # ... while a signed-in user is counted on their own.
    user = get_user_model().objects.create_user("shopper", password="pw")
    client.force_authenticate(user)
    assert client.get(url).status_code == 200


def test_throttle_lets_requests_through_when_the_cache_is_down(client, catalog, settings, caplog):
    vary(settings, API_THROTTLE_RATE="1/minute")
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/1",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    with caplog.at_level(logging.WARNING, logger="visualsearch.api.throttling"):
        codes = [client.get(similar_url(catalog[0].pk)).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    assert "cache is unavailable" in caplog.text


def test_permission_classes_come_from_settings(client, catalog, settings):
    vary(settings, API_PERMISSION_CLASSES=["rest_framework.permissions.IsAuthenticated"])
    assert client.get(similar_url(catalog[0].pk)).status_code == 403
    client.force_authenticate(get_user_model().objects.create_user("staff", password="pw"))
    assert client.get(similar_url(catalog[0].pk)).status_code == 200


# --- OpenAPI schema and docs -----------------------------------------------------------


def test_schema_is_valid_openapi_and_follows_the_settings(client, settings):
    vary(settings, API_MAX_LIMIT=20)
    response = client.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    validate_schema(schema)
    similar = schema["paths"]["/api/products/{id}/similar/"]["get"]
    params = {p["name"]: p for p in similar["parameters"]}
    filters = {"category", "in_stock", "min_price", "max_price"}
    assert set(params) == {"id", "limit", "cutoff", *filters}
    assert params["id"]["schema"]["type"] == "integer"
    assert params["in_stock"]["schema"]["type"] == "boolean"
    assert params["max_price"]["schema"]["type"] == "number"
    assert params["limit"]["schema"]["maximum"] == 20
    assert {"200", "400", "404", "429"} <= set(similar["responses"])
    text = schema["paths"]["/api/search/text/"]["get"]
    assert {"q", "limit", "category"} <= {p["name"] for p in text["parameters"]}
    image = schema["paths"]["/api/search/image/"]["post"]
    assert list(image["requestBody"]["content"]) == ["multipart/form-data"]
    body = schema["components"]["schemas"]["ImageSearch"]
    assert body["properties"]["image"]["format"] == "binary"
    assert body["required"] == ["image"]
    assert {"crop_x", "crop_y", "crop_width", "crop_height", "in_stock"} <= set(body["properties"])
    result = schema["components"]["schemas"]["SearchResult"]["properties"]
    assert set(result) == RESULT_FIELDS

    vary(settings, FILTERS={})
    schema = client.get("/api/schema/", {"format": "json"}).json()
    similar = schema["paths"]["/api/products/{id}/similar/"]["get"]
    assert {p["name"] for p in similar["parameters"]} == {"id", "limit", "cutoff"}


def test_docs_page_renders_from_local_assets(client):
    from django.contrib.staticfiles import finders

    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn.jsdelivr" not in html and "unpkg.com" not in html
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")


# --- schemathesis (optional: it runs where the dev environment has it) -------------------


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(catalog, settings):
    """Schemathesis fuzzes every operation in-process, valid and invalid input alike."""
    schemathesis = pytest.importorskip("schemathesis")
    from django.core.signals import request_finished, request_started
    from django.core.wsgi import get_wsgi_application
    from django.db import close_old_connections
    from hypothesis import HealthCheck, given
    from hypothesis import settings as fuzz_settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    vary(settings, API_THROTTLE_RATE=None)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    # Keep the test's database connection open across requests, as Django's test client does.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    try:
        app = get_wsgi_application()
        schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", app)
        modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in modes:

                @given(case=operation.as_strategy(generation_mode=mode))
                @fuzz_settings(
                    max_examples=40,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def fuzz(case):
                    case.call_and_validate(checks=checks)

                fuzz()
    finally:
        for signal in (request_started, request_finished):
            signal.connect(close_old_connections)


# --- visualsearch.query.filters --------------------------------------------------------------


def test_filter_kwargs_convert_with_the_model_fields(category):
    kwargs = filter_kwargs(
        {"category": "shirts", "in_stock": "No", "max_price": "40", "min_price": "", "page": "2"}
    )
    assert kwargs == {"category__slug": "shirts", "in_stock": False, "price__lte": Decimal("40")}
    with pytest.raises(InvalidFilter) as excinfo:
        filter_kwargs({"in_stock": "maybe"})
    assert excinfo.value.param == "in_stock"
    assert "in_stock" in str(excinfo.value)


def test_filter_lookups_follow_relations_and_lists(settings):
    vary(
        settings,
        FILTERS={
            "categories": "category__slug__in",
            "category_id": "category",
            "no_description": "description__isnull",
            "image": "images",
        },
    )
    assert filter_kwargs(
        {"categories": "a, b", "category_id": "3", "no_description": "true", "image": "7"}
    ) == {
        "category__slug__in": ["a", "b"],
        "category": 3,
        "description__isnull": True,
        "images": 7,
    }
    with pytest.raises(InvalidFilter, match="category_id"):
        filter_kwargs({"category_id": "three"})


@pytest.mark.parametrize("lookup", ["colour", "category__colour", "price__lte__gte", "", None])
def test_bad_filter_configuration_names_the_key(settings, lookup):
    vary(settings, FILTERS={"colour": lookup})
    with pytest.raises(ImproperlyConfigured, match="colour"):
        get_filters()
