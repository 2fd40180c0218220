"""Shopper pages: the similar-products template tag (with its cache), list and search pages."""

import io
import re

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template import Context, Template
from django.test import override_settings
from django.urls import reverse
from PIL import Image

from shop.catalog.models import Category, ProductImage
from tests.conftest import make_image_bytes
from tests.encoders import image_only_settings
from visualsearch.ingest.pipeline import embed_images
from visualsearch.web import cache

pytestmark = pytest.mark.django_db(transaction=True)  # cache invalidation runs on commit


@pytest.fixture(autouse=True)
def clean_cache():
    from django.core.cache import caches

    caches["default"].clear()


@pytest.fixture
def catalog(make_product):
    products = [
        make_product(color=color, shape=shape)
        for color in ["red", "blue", "green", "orange", "purple", "black"]
        for shape in ["square", "circle"]
    ]
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return products


def render_widget(product, arguments="limit=8"):
    template = Template("{% load visualsearch %}{% similar_products product " + arguments + " %}")
    return template.render(Context({"product": product}))


def cards(html):
    return re.findall(r'<li class="vs-card', html)


def test_widget_renders_similar_products_with_links_thumbnails_and_prices(catalog):
    html = render_widget(catalog[0], "limit=5")
    assert len(cards(html)) == 5
    assert 'data-testid="similar-products"' in html
    assert catalog[0].get_absolute_url() not in html  # never the product itself
    assert html.count('<img src="/media/') == 5
    assert html.count("19.90") == 5
    assert "Similar products" in html


def test_app_default_widget_template_without_project_override(catalog):
    templates = [{**settings.TEMPLATES[0], "DIRS": []}]  # only the apps' templates
    with override_settings(TEMPLATES=templates):
        html = render_widget(catalog[0], "limit=3")
    assert len(cards(html)) == 3
    assert "€" not in html and html.count('class="vs-price">19.90<') == 3


def test_widget_renders_nothing_without_embedding(make_product, catalog):
    fresh = make_product(color="red")
    assert render_widget(fresh) == ""


def test_widget_template_and_title_can_be_chosen_per_call(catalog, tmp_path):
    (tmp_path / "mine.html").write_text("{% for item in items %}[{{ item.name }}]{% endfor %}")
    templates = [{**settings.TEMPLATES[0], "DIRS": [tmp_path, *settings.TEMPLATES[0]["DIRS"]]}]
    with override_settings(TEMPLATES=templates):
        html = render_widget(catalog[0], 'limit=3 template="mine.html"')
    assert html.count("[") == 3 and "<li" not in html
    assert "Looks alike" in render_widget(catalog[0], 'limit=2 title="Looks alike"')


def test_widget_filters(catalog):
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    for product in catalog[1:4]:
        product.category = shoes
        product.save()
    template = Template("{% load visualsearch %}{% similar_products product category=shoes %}")
    html = template.render(Context({"product": catalog[0], "shoes": shoes}))
    assert len(cards(html)) == 3


def test_widget_is_cached_and_invalidated_when_embeddings_change(
    catalog, make_product, django_assert_num_queries
):
    first = render_widget(catalog[0])
    with django_assert_num_queries(0):
        assert render_widget(catalog[0]) == first  # served from the cache
    twin = make_product(color="red", shape="square")  # saving invalidates on commit
    embed_images(twin.images.values_list("pk", flat=True))
    second = render_widget(catalog[0])
    assert twin.get_absolute_url() in second
    assert second != first


def test_widget_cache_drops_when_a_product_changes(catalog):
    neighbour_url = re.search(r'<a href="([^"]+)"', render_widget(catalog[0])).group(1)
    neighbour = next(p for p in catalog if p.get_absolute_url() == neighbour_url)
    neighbour.name = "Renamed shirt"
    neighbour.save()
    assert "Renamed shirt" in render_widget(catalog[0])


def test_widget_works_when_the_cache_is_down(catalog):
    caches = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=caches):
        assert cache.generation() is None
        assert len(cards(render_widget(catalog[0]))) == 8


def test_product_page_shows_the_widget(client, catalog):
    page = client.get(catalog[0].get_absolute_url()).content.decode()
    similar = page.split('data-testid="similar-products"')[1].split("</ul>")[0]
    assert len(cards(similar)) == 8  # "Recommended for you" follows: tests/query/test_recommend.py
    assert catalog[0].name in page


def test_product_list_filters_by_category_and_paginates(client, make_product, catalog):
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    for _ in range(3):
        make_product(category=shoes)
    page = client.get(reverse("catalog:product_list"), {"category": "shoes"}).content.decode()
    assert page.count('class="card"') == 3
    assert 'aria-current="page">Shoes' in page
    for _ in range(30):
        make_product(color="cyan")
    first = client.get(reverse("catalog:product_list")).content.decode()
    assert first.count('class="card"') == 24
    assert 'rel="next"' in first
    second = client.get(reverse("catalog:product_list"), {"page": 2}).content.decode()
    assert second.count('class="card"') == 45 - 24
    assert client.get(reverse("catalog:product_list"), {"category": "nope"}).status_code == 404


def upload(data, name="photo.jpg", content_type="image/jpeg"):
    return SimpleUploadedFile(name, data, content_type)


def result_names(response):
    return re.findall(r'<span class="name">([^<]+)</span>', response.content.decode())


def test_search_page_renders_an_accessible_form(client):
    page = client.get(reverse("catalog:search")).content.decode()
    assert 'enctype="multipart/form-data"' in page
    assert 'accept="image/*"' in page
    assert 'for="id_image"' in page and 'for="id_q"' in page
    assert "csrfmiddlewaretoken" in page


def test_search_by_photo_finds_the_same_product_first(client, catalog):
    response = client.post(
        reverse("catalog:search"), {"image": upload(make_image_bytes("green", "circle"))}
    )
    assert response.status_code == 200
    names = result_names(response)
    assert names[0].startswith("green circle")
    assert 'data-testid="search-results"' in response.content.decode()
    assert "data:image/jpeg;base64," in response.content.decode()  # the photo searched with


def test_search_with_a_crop_box_searches_the_cropped_part(client, catalog):
    # Left half red, right half blue: cropping the right half must find blue first.
    image = Image.new("RGB", (192, 96), "white")
    image.paste(Image.open(io.BytesIO(make_image_bytes("red"))), (0, 0))
    image.paste(Image.open(io.BytesIO(make_image_bytes("blue"))), (96, 0))
    out = io.BytesIO()
    image.save(out, "PNG")
    crop = {"crop_x": 96, "crop_y": 0, "crop_width": 96, "crop_height": 96}
    response = client.post(
        reverse("catalog:search"), {"image": upload(out.getvalue(), "two.png"), **crop}
    )
    assert result_names(response)[0].startswith("blue square")
    crop = {"crop_x": 0, "crop_y": 0, "crop_width": 96, "crop_height": 96}
    response = client.post(
        reverse("catalog:search"), {"image": upload(out.getvalue(), "two.png"), **crop}
    )
    assert result_names(response)[0].startswith("red square")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image": upload(b"", "empty.jpg")}, "The submitted file is empty."),
        ({"image": upload(b"<html>hi</html>", "page.jpg")}, "not an image format"),
        ({"image": upload(make_image_bytes()[:200], "cut.jpg")}, "could not be decoded"),
        ({}, "Choose a photo or type a description"),
        (
            {"image": upload(make_image_bytes()), "crop_x": 0, "crop_y": 0, "crop_width": 5},
            "A crop box needs x, y, width and height.",
        ),
        (
            {
                "image": upload(make_image_bytes()),
                **{"crop_x": 50, "crop_y": 50, "crop_width": 90, "crop_height": 20},
            },
            "reaches outside the 96x96 image",
        ),
        ({"crop_x": "a", "q": "shirt"}, "Enter a whole number."),
    ],
    ids=["empty", "html", "truncated", "nothing", "partial-crop", "outside-crop", "bad-number"],
)
def test_bad_searches_get_a_400_with_the_reason(client, catalog, data, message):
    response = client.post(reverse("catalog:search"), data)
    assert response.status_code == 400
    page = response.content.decode()
    assert 'role="alert"' in page
    assert message in page.replace("&#x27;", "'")


def test_oversize_upload_is_refused_with_the_limit(client, catalog):
    with override_settings(VISUALSEARCH={**settings.VISUALSEARCH, "MAX_IMAGE_BYTES": 1024}):
        big = make_image_bytes(size=(600, 600), fmt="PNG")
        response = client.post(reverse("catalog:search"), {"image": upload(big, "big.png")})
    assert response.status_code == 400
    assert "larger than the" in response.content.decode()


def test_search_by_description_with_clip(client, catalog):
    response = client.get(reverse("catalog:search"), {"q": "a red square"})
    assert response.status_code == 200
    assert len(result_names(response)) == 12  # the tiny CLIP ranks every product
    assert "cannot search by description" not in response.content.decode()


def test_description_without_any_text_search_says_so(client, catalog):
    # No text tower and text search off (tests/query/test_text_search.py covers it on).
    with override_settings(VISUALSEARCH=image_only_settings(settings.VISUALSEARCH)):
        response = client.get(reverse("catalog:search"), {"q": "orange"})
        assert response.status_code == 200
        assert result_names(response) == []
        assert "cannot search by description" in response.content.decode()
        # Photo + words: the photo alone is used, and the page says so.
        response = client.post(
            reverse("catalog:search"),
            {"image": upload(make_image_bytes("orange", "circle")), "q": "orange"},
        )
        assert result_names(response)[0].startswith("orange circle")
        assert "the photo alone was used" in response.content.decode()


def test_search_in_a_category(client, catalog):
    shoes = Category.objects.create(name="Shoes", slug="shoes")
    for product in catalog[:2]:
        product.category = shoes
        product.save()
    response = client.post(
        reverse("catalog:search"),
        {"image": upload(make_image_bytes("purple")), "category": "shoes"},
    )
    assert sorted(result_names(response)) == sorted(p.name for p in catalog[:2])


def hooked_price(product, request):
    """A PRODUCT_PRICE hook that prices per request, as django-oscar's strategies do."""
    return None if request is None else float(request.GET.get("rate", "1")) * 10


def hooked_name(product, request):
    return f"Hooked {product.pk}"


def test_the_tag_puts_the_products_in_a_variable_for_the_shops_own_card(catalog):
    template = Template(
        "{% load visualsearch %}{% similar_products product limit=3 as items %}"
        "{% for item in items %}[{{ item.pk }}:{{ item.similarity|floatformat:2 }}]{% endfor %}"
    )
    html = template.render(Context({"product": catalog[0]}))
    pks = [int(part.split(":")[0]) for part in re.findall(r"\[([^\]]+)\]", html)]
    assert len(pks) == 3 and catalog[0].pk not in pks
    assert "vs-card" not in html  # no widget markup: the shop renders its own


def test_the_tag_never_breaks_the_page(catalog, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("a card template that needs a request")

    monkeypatch.setattr("visualsearch.templatetags.visualsearch.query_similar_products", broken)
    for arguments in ("limit=3", "limit=3 as items"):
        html = Template(
            "{% load visualsearch %}before{% similar_products product " + arguments + " %}"
            "{{ items|length }}after"
        ).render(Context({"product": catalog[0]}))
        assert html.startswith("before") and html.endswith("after")
    assert "a card template that needs a request" in caplog.text


def test_product_hooks_get_the_request_and_are_not_cached(catalog, rf, settings):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "PRODUCT_PRICE": "tests.shop.test_shop_pages.hooked_price",
        "PRODUCT_NAME": "tests.shop.test_shop_pages.hooked_name",
    }
    template = Template("{% load visualsearch %}{% similar_products product limit=2 %}")
    first = template.render(Context({"product": catalog[0], "request": rf.get("/?rate=2")}))
    second = template.render(Context({"product": catalog[0], "request": rf.get("/?rate=3")}))
    assert first.count("€20.0<") == 2 and "Hooked" in first
    assert second.count("€30.0<") == 2  # a per-request price: never cached


def test_api_results_take_the_price_hook(client, catalog, settings):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "PRODUCT_PRICE": "tests.shop.test_shop_pages.hooked_price",
    }
    url = reverse("visualsearch-api:similar-products", args=[catalog[0].pk])
    results = client.get(url, {"rate": "4", "limit": 2}).json()["results"]
    assert [float(result["price"]) for result in results] == [40.0, 40.0]


def test_a_hook_that_does_not_import_is_a_check_error(settings):
    from visualsearch.checks import check_settings

    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "PRODUCT_PRICE": "tests.nope.price"}
    messages = check_settings()
    assert [message.id for message in messages] == ["visualsearch.E005"]
    assert "PRODUCT_PRICE" in messages[0].msg


def in_stock_only(request):
    """A PRODUCT_QUERYSET hook: the products the shop shows."""
    from shop.catalog.models import Product

    return Product.objects.filter(in_stock=True)


def test_product_queryset_hides_products_everywhere(client, catalog, settings):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "PRODUCT_QUERYSET": "tests.shop.test_shop_pages.in_stock_only",
    }
    hidden = catalog[1]
    hidden.in_stock = False
    hidden.save()
    results = client.get(
        reverse("visualsearch-api:similar-products", args=[catalog[0].pk]), {"limit": 11}
    ).json()["results"]
    assert hidden.pk not in [result["id"] for result in results] and len(results) == 10
    url = reverse("visualsearch-api:similar-products", args=[hidden.pk])
    assert client.get(url).status_code == 404
    html = render_widget(catalog[0], "limit=11")
    assert hidden.get_absolute_url() not in html and len(cards(html)) == 10
