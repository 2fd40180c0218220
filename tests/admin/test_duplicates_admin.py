"""The admin's "Duplicate images" page: groups with thumbnails and product links, staff only."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import caches
from django.core.management import call_command
from django.urls import reverse

from shop.catalog.models import ProductImage
from tests.query.test_duplicates import LOOSE, copies, jpeg, shirt
from visualsearch.admin import VisualSearchAdmin
from visualsearch.ingest.pipeline import embed_images

pytestmark = pytest.mark.django_db


def text(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


@pytest.fixture(autouse=True)
def _forget_remembered_groups():
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def catalog(make_product):
    """A shirt, a crop and a mirror image of it (each its own product), a colour variant."""
    original = shirt()
    made = copies(original)
    products = {
        "original": make_product("crimson", "shirt", image_bytes=jpeg(original)),
        "crop": make_product("crimson", "shirt-crop", image_bytes=made["crop"]),
        "mirror": make_product("crimson", "shirt-mirror", image_bytes=made["mirror"]),
        "variant": make_product("navy", "shirt", image_bytes=jpeg(shirt("navy"))),
    }
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    return products


def page(client, **params) -> str:
    return text(client.get(reverse("admin:visualsearch_duplicates"), params))


def test_staff_see_each_group_with_thumbnails_and_links_to_the_products(admin_client, catalog):
    html = page(admin_client, threshold=LOOSE)
    assert "1 group of duplicate images" in html
    assert "3 images of 3 products" in html
    for name in ("original", "crop", "mirror"):
        product = catalog[name]
        assert f'<img src="{product.images.get().image.url}"' in html
        assert reverse("admin:catalog_product_change", args=[product.pk]) in html
        assert product.name in html
    variant = catalog["variant"]
    assert variant.name not in html and variant.images.get().image.url not in html
    assert "Found 0\xa0minutes ago" in html and f"at least {LOOSE}" in html


def test_the_overview_links_the_page(admin_client):
    html = text(admin_client.get(reverse("admin:visualsearch_overview")))
    assert f'href="{reverse("admin:visualsearch_duplicates")}">Duplicate images<' in html


def test_the_page_is_for_staff_with_the_overviews_permission(client, django_user_model):
    url = reverse("admin:visualsearch_duplicates")
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    client.force_login(django_user_model.objects.create_user("customer", password="x"))
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403
    assert client.post(url).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_visualsearch"))
    client.force_login(django_user_model.objects.get(pk=staff.pk))  # no permission cache
    assert "No duplicate images." in page(client)


def test_bad_parameters_are_shown_and_the_settings_used(admin_client, catalog):
    html = page(admin_client, threshold=7)
    assert "Ensure this value is less than or equal to 1" in html
    assert "at least 0.8" in html  # DUPLICATE_THRESHOLD


def test_a_large_catalog_waits_for_the_command_then_shows_its_groups(
    admin_client, catalog, monkeypatch
):
    monkeypatch.setattr(VisualSearchAdmin, "duplicates_inline_limit", 3, raising=False)
    html = page(admin_client, threshold=LOOSE)
    assert "Not looked for yet" in html and "manage.py visualsearch_duplicates" in html
    assert "group of duplicate images" not in html
    out = io.StringIO()
    call_command("visualsearch_duplicates", "--threshold", str(LOOSE), "--no-progress", stdout=out)
    assert "1 group of duplicate images" in page(admin_client, threshold=LOOSE)


def test_look_again_now_searches_and_comes_back_to_the_page(admin_client, catalog, monkeypatch):
    monkeypatch.setattr(VisualSearchAdmin, "duplicates_inline_limit", 0, raising=False)
    url = reverse("admin:visualsearch_duplicates") + f"?threshold={LOOSE}&across_products=on"
    response = admin_client.post(url)
    assert response.status_code == 302 and response["Location"] == url
    html = text(admin_client.get(url))
    assert "1 group of duplicate images" in html and "3 images of 3 products" in html


def test_images_deleted_since_the_search_are_left_out(admin_client, catalog):
    assert "3 images of 3 products" in page(admin_client, threshold=LOOSE)  # remembered
    catalog["mirror"].images.get().delete()
    html = page(admin_client, threshold=LOOSE)
    assert "2 images of 2 products" in html and catalog["mirror"].name not in html
    catalog["crop"].images.get().delete()
    assert "No duplicate images." in page(admin_client, threshold=LOOSE)
