"""The shop and the admin in headless Chromium against the live server (issue 3).

Each test drives the real pages: the product page's similar-items widget, the search page
with an uploaded photo, and an admin upload that a real Celery worker embeds. Screenshots go
to ``bench/results/screenshots/``.
"""

from __future__ import annotations

import time

import pytest
from django.urls import reverse
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from shop.catalog.models import ProductImage
from tests.browser import browser_fixture, loaded_images, save_screenshot  # noqa: F401
from tests.conftest import PALETTE, make_image_bytes
from visualsearch.ingest.pipeline import embed_images
from visualsearch.models import EmbeddingStatus

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("transactional_db")]

SHAPES = ("square", "circle", "stripes")
SIMILAR = '[data-testid="similar-products"] li'
RESULTS = '[data-testid="search-results"] li'
ADMIN_PASSWORD = "browser-test-password"
# The change page's status row: the plain field or the admin mixin's coloured badge.
STATUS = ".field-embedding_status, .field-embedding_status_badge"


@pytest.fixture
def catalog(make_product, broker):
    """Twelve products with one generated photo each, embedded in this process."""
    products = [make_product(color=PALETTE[n % 10], shape=SHAPES[n % 3]) for n in range(12)]
    pks = ProductImage.objects.filter(product__in=products).values_list("pk", flat=True)
    result = embed_images(pks)
    assert not result.failed, result
    broker.flushdb()  # the save signals' tasks: nobody consumes them here
    return products


@pytest.fixture
def admin_user(django_user_model):
    return django_user_model.objects.create_superuser("staff", "staff@example.com", ADMIN_PASSWORD)


def assert_page_ok(browser) -> None:
    """The page rendered: not Django's 500 (or 404) page."""
    heading = " ".join(h.text for h in browser.find_elements(By.TAG_NAME, "h1"))
    assert "Server Error" not in browser.title + heading, browser.page_source[:2000]
    assert "Not Found" not in browser.title + heading, browser.current_url


def assert_images_loaded(browser, selector: str = "img") -> list[dict]:
    """Every rendered image matching ``selector`` loaded (no broken-image icons)."""
    images = loaded_images(browser, selector)
    broken = [(image["src"], image["alt"]) for image in images if image["width"] == 0]
    assert not broken, f"images shown broken (src, alt): {broken}"
    return images


def log_in(browser, live_server, user) -> None:
    """Through the admin's own login form."""
    browser.get(live_server.url + reverse("admin:login"))
    browser.find_element(By.NAME, "username").send_keys(user.get_username())
    browser.find_element(By.NAME, "password").send_keys(ADMIN_PASSWORD)
    browser.find_element(By.CSS_SELECTOR, '#login-form [type="submit"]').click()
    WebDriverWait(browser, 10).until(lambda d: "/login/" not in d.current_url)
    assert_page_ok(browser)


def test_product_page_shows_similar_products(live_server, browser, catalog):
    product = catalog[0]
    browser.get(live_server.url + product.get_absolute_url())
    assert_page_ok(browser)
    assert browser.find_element(By.TAG_NAME, "h1").text == product.name

    items = browser.find_elements(By.CSS_SELECTOR, SIMILAR)
    assert len(items) == 8  # the widget's limit; the other 11 products are all candidates
    names = [item.find_element(By.CSS_SELECTOR, "a").text for item in items]
    assert not any(product.name in name for name in names), "the product lists itself"
    for item in items:
        assert (
            item.find_element(By.TAG_NAME, "a")
            .get_attribute("href")
            .startswith(live_server.url + "/products/")
        )

    save_screenshot(browser, "product-page.png")  # tall window: lazy thumbnails load too
    images = assert_images_loaded(browser, f"{SIMILAR} img")
    assert len(images) == 8
    assert_images_loaded(browser)  # the product's own photos, the whole page


def test_search_page_finds_products_for_an_uploaded_photo(live_server, browser, catalog, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(make_image_bytes("red", "circle", size=(320, 320)))
    browser.get(live_server.url + reverse("catalog:search"))
    assert_page_ok(browser)
    form = browser.find_element(By.CSS_SELECTOR, "form#search-form")
    form.find_element(By.CSS_SELECTOR, 'input[name="image"]').send_keys(str(photo))
    assert form.find_element(By.CSS_SELECTOR, 'input[name="q"]').is_displayed()
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()

    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, RESULTS))
    assert_page_ok(browser)
    results = browser.find_elements(By.CSS_SELECTOR, RESULTS)
    names = {product.name for product in catalog}
    assert 1 <= len(results) <= len(catalog)
    assert all(any(name in result.text for name in names) for result in results)
    save_screenshot(browser, "search-results.png")
    assert len(assert_images_loaded(browser, f"{RESULTS} img")) == len(results)
    assert_images_loaded(browser)  # the query thumbnail and the form too


def test_search_page_text_query(live_server, browser, catalog):
    browser.get(live_server.url + reverse("catalog:search"))
    form = browser.find_element(By.CSS_SELECTOR, "form#search-form")
    form.find_element(By.CSS_SELECTOR, 'input[name="q"]').send_keys("a red shirt")
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.CSS_SELECTOR, RESULTS))
    assert_page_ok(browser)
    names = {product.name for product in catalog}
    results = browser.find_elements(By.CSS_SELECTOR, RESULTS)
    assert all(any(name in result.text for name in names) for result in results)


def test_search_page_rejects_a_file_that_is_not_an_image(live_server, browser, catalog, tmp_path):
    # Named .jpg so that neither the file input's accept filter nor a type check in the
    # page's JavaScript can tell: the server has to decode it and say no.
    fake = tmp_path / "not-a-photo.jpg"
    fake.write_bytes(b"these are notes, not a JPEG\n" * 20)
    browser.get(live_server.url + reverse("catalog:search"))
    form = browser.find_element(By.CSS_SELECTOR, "form#search-form")
    form.find_element(By.CSS_SELECTOR, 'input[name="image"]').send_keys(str(fake))
    form.find_element(By.CSS_SELECTOR, 'button[type="submit"]').click()

    alerts = (By.CSS_SELECTOR, '[role="alert"]')
    alert = WebDriverWait(browser, 20).until(
        lambda d: next((a for a in d.find_elements(*alerts) if a.text), None)
    )
    assert alert.is_displayed()
    assert_page_ok(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, RESULTS)
    assert browser.find_element(By.CSS_SELECTOR, "form#search-form")  # try again
    save_screenshot(browser, "search-error.png")


def test_admin_upload_becomes_ready(
    live_server, browser, admin_user, make_product, celery_worker_process, tmp_path
):
    others = [make_product(color=color, shape="circle") for color in PALETTE[:3]]
    product = make_product(color="orange", shape="stripes", images=0)
    photo = tmp_path / "front.jpg"
    photo.write_bytes(make_image_bytes("orange", "stripes", size=(320, 320)))

    log_in(browser, live_server, admin_user)
    browser.get(live_server.url + reverse("admin:catalog_productimage_add"))
    assert_page_ok(browser)
    browser.find_element(By.ID, "id_product").send_keys(str(product.pk))  # raw-id field
    browser.find_element(By.ID, "id_image").send_keys(str(photo))
    browser.find_element(By.ID, "id_alt_text").send_keys("front")
    browser.find_element(By.NAME, "_save").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist"))
    assert "added successfully" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text

    image = ProductImage.objects.get(product=product)
    change_url = live_server.url + reverse("admin:catalog_productimage_change", args=[image.pk])
    started, status = time.monotonic(), ""
    while time.monotonic() - started < 60:
        browser.get(change_url)
        status = " ".join(field.text for field in browser.find_elements(By.CSS_SELECTOR, STATUS))
        if "Ready" in status:
            break
        time.sleep(0.5)
    assert "Ready" in status, celery_worker_process.log.read_text()[-3000:]
    print(f"admin upload shown Ready after {time.monotonic() - started:.1f}s")
    assert ProductImage.objects.get(pk=image.pk).embedding_status == EmbeddingStatus.READY

    # The list: every row (the upload and the other products' photos) ends up Ready.
    others_done = time.monotonic() + 30
    while ProductImage.objects.exclude(embedding_status=EmbeddingStatus.READY).exists():
        assert time.monotonic() < others_done, celery_worker_process.log.read_text()[-3000:]
        time.sleep(0.2)
    browser.get(live_server.url + reverse("admin:catalog_productimage_changelist"))
    assert_page_ok(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 + len(others)
    uploaded = [row for row in rows if product.name in row.text]
    assert len(uploaded) == 1 and "Ready" in uploaded[0].text
    save_screenshot(browser, "admin-image-list.png")
    assert_images_loaded(browser)


def test_admin_overview(live_server, browser, admin_user, catalog, make_product):
    make_product(color="gray", shape="square")  # one still pending: no worker here
    overview = reverse("admin:visualsearch_overview")
    log_in(browser, live_server, admin_user)
    browser.get(live_server.url + reverse("admin:index"))
    link = browser.find_element(By.CSS_SELECTOR, f'a[href="{overview}"]')
    link.click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url == live_server.url + overview)
    assert_page_ok(browser)
    text = browser.find_element(By.ID, "content").text
    assert "Ready" in text and "Pending" in text
    save_screenshot(browser, "admin-overview.png")
    assert_images_loaded(browser)
