"""The Django admin for staff: image list, actions, neighbours, search by image, overview."""

from __future__ import annotations

import re
import socket
import time

import pytest
from celery import current_app
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from shop.catalog.models import ProductImage
from tests.conftest import make_image_bytes, queued_tasks
from tests.services import free_port
from visualsearch.encoders import get_encoder
from visualsearch.ingest.pipeline import embed_images
from visualsearch.ingest.status import embedding_report, queue_backlog
from visualsearch.models import EmbeddingStatus
from visualsearch.web import cache

pytestmark = pytest.mark.django_db

IMAGES = "/admin/catalog/productimage/"


def embed_all():
    return embed_images(ProductImage.objects.values_list("pk", flat=True))


def text(response) -> str:
    return response.content.decode()


def stat(html: str, name: str) -> str:
    """The big number on the overview's card ``name`` (a status, "total" or the backlog)."""
    css = "visualsearch-backlog" if name == "backlog" else f"visualsearch-stat-{name}"
    match = re.search(rf'class="{css}">.*?visualsearch-count">([^<]+)<', html, re.S)
    assert match, f"no {name} card"
    return match.group(1)


def statuses(product) -> set[str]:
    return set(product.images.values_list("embedding_status", flat=True))


def upload(data: bytes, name: str = "photo.jpg") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="image/jpeg")


@pytest.fixture
def catalog(make_product):
    """Two red products, a blue one (all ready), one that failed and one still pending."""
    red = make_product(color="red", images=2)
    red2 = make_product(color="red", shape="circle")
    blue = make_product(color="blue", shape="stripes")
    broken = make_product(image_bytes=b"this is not an image")
    embed_all()
    waiting = make_product(color="green")
    return {"red": red, "red2": red2, "blue": blue, "broken": broken, "waiting": waiting}


# --- product image list ------------------------------------------------------------------


def test_image_changelist_shows_thumbnail_status_model_and_filters(admin_client, catalog):
    html = text(admin_client.get(IMAGES))
    image = catalog["red"].images.first()
    assert f'<img src="{image.image.url}"' in html
    assert html.count('class="visualsearch-status visualsearch-status-ready"') == 4
    assert "visualsearch-status-failed" in html and "visualsearch-status-pending" in html
    assert get_encoder().model_id in html  # the encoder model column
    assert "By embedding status" in html and "By encoder model" in html
    assert "Mark selected images stale" in html and "Re-embed selected images" in html

    failed = text(admin_client.get(IMAGES, {"embedding_status__exact": "failed"}))
    assert str(catalog["broken"].images.get()) in failed
    assert "visualsearch-status-ready" not in failed
    by_model = text(admin_client.get(IMAGES, {"embedding_model": get_encoder().model_id}))
    assert by_model.count("visualsearch-status-ready") == 4


def test_changelist_queries_do_not_grow_with_rows(
    admin_client, make_product, django_assert_max_num_queries
):
    make_product(images=2)
    with django_assert_max_num_queries(12):
        admin_client.get(IMAGES)
    for _ in range(8):
        make_product(images=2)
    with django_assert_max_num_queries(12):
        admin_client.get(IMAGES)


def test_mark_stale_action_takes_rows_out_of_results_and_invalidates_cache(
    admin_client, catalog, django_capture_on_commit_callbacks
):
    from visualsearch.query import similar_products

    assert [p.pk for p in similar_products(catalog["red2"], k=1)] == [catalog["red"].pk]
    before = cache.generation()
    pks = [*catalog["red"].images.values_list("pk", flat=True), catalog["waiting"].images.get().pk]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(
            IMAGES, {"action": "mark_stale_selected", "_selected_action": pks}, follow=True
        )
    assert "Marked 2 image(s) stale" in text(response)
    assert "1 not ready, left as they were" in text(response)
    assert statuses(catalog["red"]) == {EmbeddingStatus.STALE}
    assert statuses(catalog["waiting"]) == {EmbeddingStatus.PENDING}
    assert callbacks and cache.generation() != before
    assert catalog["red"].pk not in [p.pk for p in similar_products(catalog["red2"])]


def test_reembed_action_enqueues_to_the_broker(admin_client, catalog, broker):
    pks = list(catalog["blue"].images.values_list("pk", flat=True))
    response = admin_client.post(
        IMAGES, {"action": "reembed_selected", "_selected_action": pks}, follow=True
    )
    assert "Enqueued 1 of 1 image(s) for embedding." in text(response)
    (task,) = queued_tasks(broker)
    assert task["task"] == "visualsearch.embed_images"
    assert task["args"] == ["catalog", "productimage", pks, True]
    assert statuses(catalog["blue"]) == {EmbeddingStatus.PENDING}


def test_actions_need_change_permission(client, django_user_model, catalog):
    viewer = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_productimage"))
    client.force_login(viewer)
    html = text(client.get(IMAGES))
    assert "visualsearch-status-ready" in html
    assert "mark_stale_selected" not in html and "reembed_selected" not in html


# --- product change page: neighbours -------------------------------------------------------


def test_product_page_lists_neighbours_with_scores_and_links(admin_client, catalog):
    red, red2, blue = catalog["red"], catalog["red2"], catalog["blue"]
    html = text(admin_client.get(f"/admin/catalog/product/{red2.pk}/change/"))
    assert "Similar products (visual search)" in html
    section = html[html.index('class="visualsearch-grid"') :]
    section = section[: section.index("</ul>")]
    links = re.findall(r'href="/admin/catalog/product/(\d+)/change/"', section)
    assert [int(pk) for pk in links] == [red.pk, blue.pk]  # nearest first, itself left out
    scores = [float(s) for s in re.findall(r"similarity (-?[\d.]+)", section)]
    assert len(scores) == 2 and scores[0] > scores[1]
    assert red.name in section and red.images.first().image.url in section


def test_product_page_explains_missing_neighbours(admin_client, catalog, make_product):
    html = text(admin_client.get(f"/admin/catalog/product/{catalog['waiting'].pk}/change/"))
    assert "no image with a ready embedding" in html and "visualsearch-status-pending" in html
    html = text(admin_client.get(f"/admin/catalog/product/{catalog['broken'].pk}/change/"))
    assert "visualsearch-status-failed" in html
    bare = make_product(images=0)
    html = text(admin_client.get(f"/admin/catalog/product/{bare.pk}/change/"))
    assert "this product has no images" in html
    add = admin_client.get("/admin/catalog/product/add/")
    assert add.status_code == 200 and "Similar products (visual search)" not in text(add)


def test_product_page_when_no_other_product_is_ready(admin_client, make_product):
    only = make_product()
    embed_all()
    html = text(admin_client.get(f"/admin/catalog/product/{only.pk}/change/"))
    assert "no other product has an image with a ready embedding" in html


# --- search by image ---------------------------------------------------------------------


def test_search_view_returns_matches_for_an_uploaded_photo(admin_client, catalog):
    url = reverse("admin:visualsearch_search")
    assert url == "/admin/visualsearch/visualsearch/search/"
    page = admin_client.get(url)
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in text(page)
    response = admin_client.post(url, {"image": upload(make_image_bytes("red")), "limit": 3})
    html = text(response)
    assert response.status_code == 200 and "3 matching products" in html
    links = [int(pk) for pk in re.findall(r'href="/admin/catalog/product/(\d+)/change/"', html)]
    assert links[0] == catalog["red"].pk and len(links) == 3
    assert len(re.findall(r"similarity (-?[\d.]+)", html)) == 3
    assert 'src="data:image/jpeg;base64,' in html  # the uploaded photo, nothing stored
    assert catalog["red"].get_absolute_url() in html  # "View on site"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"plain text, not a picture", "The file is not an image format that can be read."),
        (b"", "The submitted file is empty."),
        (make_image_bytes("red")[:200], "could not be decoded"),
    ],
)
def test_search_view_rejects_bad_files_with_a_message(admin_client, catalog, data, message):
    response = admin_client.post(reverse("admin:visualsearch_search"), {"image": upload(data)})
    html = text(response)
    assert response.status_code == 200
    assert "Please correct the error below." in html and message in html
    assert "matching product" not in html


def test_search_view_rejects_oversize_files(admin_client, catalog, settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "MAX_IMAGE_BYTES": 500}
    data = make_image_bytes("red", size=(200, 200))
    assert len(data) > 500
    response = admin_client.post(reverse("admin:visualsearch_search"), {"image": upload(data)})
    assert response.status_code == 200
    assert "The file is larger than the 500 bytes limit." in text(response)


def test_search_view_requires_a_file(admin_client):
    response = admin_client.post(reverse("admin:visualsearch_search"), {"limit": 5})
    assert response.status_code == 200 and "This field is required." in text(response)


# --- status overview ---------------------------------------------------------------------


def test_overview_counts_by_status_and_model_failures_and_backlog(admin_client, catalog, broker):
    from visualsearch.ingest.tasks import enqueue

    ProductImage.objects.filter(pk=catalog["blue"].images.get().pk).update(
        embedding_model="clip:older-model"
    )
    pending = [row.pk for row in ProductImage.objects.all()[:3]]
    assert enqueue(ProductImage, pending, batch_size=1) == 3  # no worker: they wait

    url = reverse("admin:visualsearch_overview")
    assert url == "/admin/visualsearch/visualsearch/"
    response = admin_client.get(url)
    html = text(response)
    assert response.status_code == 200
    assert stat(html, "ready") == "4" and stat(html, "failed") == "1"
    assert stat(html, "pending") == "1" and stat(html, "stale") == "0"
    assert stat(html, "total") == "6" and stat(html, "backlog") == "3"
    assert "waiting in “celery”" in html
    model_id = get_encoder().model_id
    assert f"<code>{model_id}</code>" in html and "<code>clip:older-model</code>" in html
    assert "(active)" in html and "(not embedded yet)" in html
    failed = catalog["broken"].images.get()
    assert "The file is not an image format that can be read." in html
    assert f"{IMAGES}{failed.pk}/change/" in html
    assert f"{IMAGES}?embedding_status__exact=failed" in html
    assert f'href="{reverse("admin:visualsearch_search")}"' in html
    search = text(admin_client.get(reverse("admin:visualsearch_search")))
    assert f'href="{url}"' in search and f'href="{IMAGES}"' in search


def test_overview_with_an_unreachable_broker_says_unknown_quickly(
    admin_client, catalog, monkeypatch
):
    monkeypatch.setitem(current_app.conf, "broker_read_url", f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    response = admin_client.get(reverse("admin:visualsearch_overview"))
    assert time.monotonic() - started < 5
    html = text(response)
    assert response.status_code == 200
    assert stat(html, "backlog") == "unknown" and "the broker did not answer" in html
    assert stat(html, "ready") == "4"


def test_queue_backlog_is_none_for_closed_and_silent_brokers(broker):
    started = time.monotonic()
    assert queue_backlog(broker_url=f"redis://127.0.0.1:{free_port()}/0", timeout=1) is None
    assert time.monotonic() - started < 3
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        assert queue_backlog(broker_url=url, timeout=0.5) is None
        assert time.monotonic() - started < 3
    assert queue_backlog() == 0  # the real broker, empty queue (Redis has no such list)


def test_embedding_report(catalog):
    report = embedding_report(failures=1)
    assert report.by_status == {"pending": 1, "ready": 4, "failed": 1, "stale": 0}
    assert report.total == 6 and report.encoder_model == get_encoder().model_id
    assert [m.model_id for m in report.by_model] == [get_encoder().model_id, ""]
    assert report.by_model[0].active and report.by_model[0].counts["ready"] == 4
    assert report.by_model[1].counts == {"pending": 1, "ready": 0, "failed": 1, "stale": 0}
    assert [row.pk for row in report.failures] == [catalog["broken"].images.get().pk]


# --- reachable from the index, staff only ------------------------------------------------


def test_admin_index_links_the_overview(admin_client):
    html = text(admin_client.get("/admin/"))
    assert "Visual search overview" in html
    assert f'href="{reverse("admin:visualsearch_overview")}"' in html


@pytest.mark.parametrize("name", ["admin:visualsearch_overview", "admin:visualsearch_search"])
def test_views_are_for_staff_with_permission(client, django_user_model, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    customer = django_user_model.objects.create_user("customer", password="x")
    client.force_login(customer)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(url).status_code == 403
    assert "Visual search overview" not in text(client.get("/admin/"))

    staff.user_permissions.add(Permission.objects.get(codename="view_visualsearch"))
    staff = django_user_model.objects.get(pk=staff.pk)  # drop the permission cache
    client.force_login(staff)
    assert client.get(url).status_code == 200
    assert "Visual search overview" in text(client.get("/admin/"))
