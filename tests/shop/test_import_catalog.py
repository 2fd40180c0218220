"""``manage.py import_catalog``: local files, URLs, bad rows, idempotent re-runs, shared data."""

from __future__ import annotations

import csv
import functools
import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from decimal import Decimal
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.storage import default_storage
from django.core.management import CommandError, call_command
from PIL import Image

from shop.catalog.management.commands.import_catalog import demo_price
from shop.catalog.models import Category, Product, ProductImage
from tests.conftest import BASE_DIR, SHARED_DATA, database_url, make_image_bytes, queued_tasks

FASHION = [
    "id",
    "file",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]


def fashion(id: str, file: str, name: str, article: str = "Tshirts", colour: str = "Blue") -> dict:
    """A row shaped like the shared fashion-products CSV."""
    return {
        "id": id,
        "file": file,
        "gender": "Men",
        "masterCategory": "Apparel",
        "subCategory": "Topwear",
        "articleType": article,
        "baseColour": colour,
        "season": "Summer",
        "year": "2012",
        "usage": "Casual",
        "productDisplayName": name,
    }


def write_csv(path: Path, rows: list[dict], columns: list[str] = FASHION) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_import(*args: object) -> tuple[str, str]:
    """Run the command in-process; returns (stdout, stderr). Raises what the command raises."""
    stdout, stderr = StringIO(), StringIO()
    call_command("import_catalog", *map(str, args), stdout=stdout, stderr=stderr)
    return stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """``tmp_path/images`` with a few Pillow-made photos, plus one outside it (absolute path)."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(make_image_bytes("red"))
    (folder / "b.jpg").write_bytes(make_image_bytes("red", "circle"))
    (folder / "c.png").write_bytes(make_image_bytes("blue", fmt="PNG"))
    (tmp_path / "elsewhere.jpg").write_bytes(make_image_bytes("green", "stripes"))
    return folder


@pytest.fixture
def local_csv(tmp_path: Path, images: Path) -> Path:
    """Three products; the first has two rows (two images), the third an absolute path."""
    return write_csv(
        tmp_path / "products.csv",
        [
            fashion("101", "images/a.jpg", "Red Square Tee"),
            fashion("101", "images/b.jpg", "Red Square Tee"),
            fashion("102", "images/c.png", "Blue Shirt", article="Shirts"),
            fashion("103", str(tmp_path / "elsewhere.jpg"), "Green Shoe", article="Casual Shoes"),
        ],
    )


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder without logging; ``/slow/…`` answers after 1.5 s, ``/to-ftp`` redirects."""

    def do_GET(self) -> None:
        if self.path == "/to-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/photo.jpg")
            self.end_headers()
            return
        if self.path.startswith("/slow/"):
            time.sleep(1.5)
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/served``; yields (folder, base URL)."""
    folder = tmp_path / "served"
    (folder / "slow").mkdir(parents=True)
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.django_db
def test_imports_local_files_with_several_images_per_product(local_csv, tmp_path):
    stdout, stderr = run_import(local_csv, "--no-progress")

    assert stdout.strip() == (
        "Products: 3 created, 0 updated, 0 unchanged. "
        "Images: 4 added, 0 unchanged. Rows skipped: 0."
    )
    assert "row" not in stderr
    assert Product.objects.count() == 3
    assert ProductImage.objects.count() == 4
    assert set(Category.objects.values_list("name", "slug")) == {
        ("Tshirts", "tshirts"),
        ("Shirts", "shirts"),
        ("Casual Shoes", "casual-shoes"),
    }

    tee = Product.objects.get(external_id="101")
    assert tee.name == "Red Square Tee"
    assert tee.slug == "red-square-tee-101"
    assert tee.category.name == "Tshirts"
    assert tee.price == demo_price("101")
    assert Decimal("9.99") <= tee.price <= Decimal("199.99")
    assert tee.in_stock is True
    assert "Gender: Men." in tee.description and "Colour: Blue." in tee.description
    assert "Season: Summer." in tee.description and "Usage: Casual." in tee.description
    assert [(i.position, i.source) for i in tee.images.all()] == [
        (0, "images/a.jpg"),
        (1, "images/b.jpg"),
    ]

    for image in ProductImage.objects.all():
        assert image.alt_text == image.product.name
        assert default_storage.exists(image.image.name)
        assert image.image.name.startswith("products/")
        with default_storage.open(image.image.name) as handle:
            assert Image.open(handle).size == (96, 96)
    shoe = ProductImage.objects.get(product__external_id="103")
    assert shoe.source == str(tmp_path / "elsewhere.jpg")
    assert Path(shoe.image.name).name.startswith("elsewhere")


@pytest.mark.django_db
def test_rerun_creates_nothing_and_a_changed_row_updates(local_csv, images):
    run_import(local_csv, "--no-progress")
    files = set(ProductImage.objects.values_list("pk", "image"))

    stdout, _ = run_import(local_csv, "--no-progress")

    assert stdout.strip() == (
        "Products: 0 created, 0 updated, 3 unchanged. "
        "Images: 0 added, 4 unchanged. Rows skipped: 0."
    )
    assert set(ProductImage.objects.values_list("pk", "image")) == files
    assert Product.objects.count() == 3

    rows = list(csv.DictReader(local_csv.open()))
    rows[2]["productDisplayName"] = "Navy Shirt"
    rows.append(fashion("103", "images/a.jpg", "Green Shoe", article="Casual Shoes"))
    write_csv(local_csv, rows)
    stdout, _ = run_import(local_csv, "--no-progress")

    assert "Products: 0 created, 1 updated, 2 unchanged." in stdout
    assert "Images: 1 added, 4 unchanged." in stdout
    shirt = Product.objects.get(external_id="102")
    assert shirt.name == "Navy Shirt"
    assert shirt.slug == "blue-shirt-102"  # URLs stay stable
    assert shirt.images.get().alt_text == "Navy Shirt"
    shoe = Product.objects.get(external_id="103")
    assert [i.position for i in shoe.images.all()] == [0, 1]


def test_bad_rows_are_reported_and_skipped(transactional_db, broker, tmp_path, images):
    """A real ``manage.py`` process: bad rows go to stderr, the rest is imported, exit 0."""
    (images / "notes.jpg").write_text("this is not a photo")
    csv_path = write_csv(
        tmp_path / "products.csv",
        [
            fashion("201", "images/a.jpg", "Good One"),  # row 2
            fashion("202", "images/missing.jpg", "Missing File"),  # row 3
            fashion("203", "images/notes.jpg", "Text File"),  # row 4
            fashion("", "images/b.jpg", "No Id"),  # row 5
            fashion("205", "", "No Image"),  # row 6
            fashion("206", "images/c.png", "Good Two"),  # row 7
            fashion("201", "images/b.jpg", "Good One"),  # row 8: a second image
        ],
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "DATABASE_URL": database_url()}
    result = subprocess.run(
        [sys.executable, "manage.py", "import_catalog", str(csv_path)],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert "row 3: file not found: images/missing.jpg; skipped" in result.stderr
    assert "row 4: not a usable image: images/notes.jpg: the file is not an image" in result.stderr
    assert "row 5: missing id; skipped" in result.stderr
    assert "row 6: missing image; skipped" in result.stderr
    assert not re.search(r"^row [278]:", result.stderr, re.MULTILINE)
    assert result.stdout.strip() == (
        "Products: 2 created, 0 updated, 0 unchanged. "
        "Images: 3 added, 0 unchanged. Rows skipped: 4."
    )
    assert set(Product.objects.values_list("external_id", flat=True)) == {"201", "206"}
    # A product's images are enqueued together once its transaction commits: one message each.
    images = ProductImage.objects.order_by("pk")
    expected = {
        tuple(images.filter(product__external_id=eid).values_list("pk", flat=True))
        for eid in ("201", "206")
    }
    assert {tuple(sorted(task["args"][2])) for task in queued_tasks(broker)} == expected


@pytest.mark.django_db
def test_urls_are_downloaded_and_failures_reported(tmp_path, http_root, settings):
    settings.IMPORT_ALLOW_PRIVATE_URLS = True  # the test server listens on 127.0.0.1
    folder, base = http_root
    (folder / "photo.jpg").write_bytes(make_image_bytes("purple"))
    (folder / "slow" / "late.jpg").write_bytes(make_image_bytes("yellow"))
    csv_path = write_csv(
        tmp_path / "products.csv",
        [
            fashion("301", f"{base}/photo.jpg", "From The Web"),  # row 2
            fashion("302", f"{base}/nothing-here.jpg", "Not Found"),  # row 3
            fashion("303", "ftp://127.0.0.1/photo.jpg", "FTP"),  # row 4
            fashion("304", "file:///etc/passwd", "Local File URL"),  # row 5
            fashion("305", f"{base}/slow/late.jpg", "Too Slow"),  # row 6
            fashion("306", f"{base}/to-ftp", "Redirected"),  # row 7
        ],
    )

    stdout, stderr = run_import(csv_path, "--no-progress", "--timeout", "0.3", "--workers", "2")

    assert "Products: 1 created" in stdout and "Rows skipped: 5." in stdout
    image = ProductImage.objects.get()
    assert image.product.external_id == "301"
    assert image.source == f"{base}/photo.jpg"
    assert Path(image.image.name).name.startswith("photo")
    with default_storage.open(image.image.name) as handle:
        assert Image.open(handle).size == (96, 96)
    assert f"row 3: HTTP 404 File not found for {base}/nothing-here.jpg" in stderr
    assert "row 4: unsupported URL scheme 'ftp' (only http and https)" in stderr
    assert "row 5: unsupported URL scheme 'file' (only http and https)" in stderr
    assert "row 6: " in stderr and "timed out" in stderr
    assert "row 7: HTTP 302 redirect to ftp://127.0.0.1/photo.jpg refused" in stderr


@pytest.mark.django_db
def test_oversize_files_are_rejected(local_csv):
    stdout, stderr = run_import(local_csv, "--no-progress", "--max-bytes", "100")

    assert "row 2: images/a.jpg is larger than --max-bytes 100; skipped" in stderr
    assert "Products: 0 created" in stdout and "Rows skipped: 4." in stdout
    assert not Product.objects.exists()


@pytest.mark.django_db
def test_generic_columns(tmp_path, images):
    columns = ["external_id", "image", "name", "category", "description", "price", "in_stock"]
    csv_path = write_csv(
        tmp_path / "other.csv",
        [
            {
                "external_id": "SKU-1",
                "image": "images/a.jpg",
                "name": "Mug",
                "category": "Kitchen",
                "description": "A red mug.",
                "price": "12.50",
                "in_stock": "no",
            },
            {
                "external_id": "SKU-2",
                "image": "images/b.jpg",
                "name": "Cup",
                "category": "",
                "description": "",
                "price": "",
                "in_stock": "",
            },
        ],
        columns,
    )

    run_import(csv_path, "--no-progress")

    mug = Product.objects.get(external_id="SKU-1")
    assert (mug.category.name, mug.description, mug.price, mug.in_stock) == (
        "Kitchen",
        "A red mug.",
        Decimal("12.50"),
        False,
    )
    cup = Product.objects.get(external_id="SKU-2")
    assert (cup.category.name, cup.price, cup.in_stock) == (
        "Uncategorized",
        demo_price("SKU-2"),
        True,
    )
    assert cup.slug == "cup-sku-2"


@pytest.mark.django_db
def test_category_column_option(local_csv):
    run_import(local_csv, "--no-progress", "--category-column", "subCategory")

    assert set(Category.objects.values_list("name", flat=True)) == {"Topwear"}
    with pytest.raises(CommandError, match="no column 'colour'"):
        run_import(local_csv, "--no-progress", "--category-column", "colour")


@pytest.mark.django_db
def test_limit_and_dry_run(tmp_path, images):
    csv_path = write_csv(
        tmp_path / "products.csv",
        [
            fashion("1", "images/a.jpg", "One"),
            fashion("2", "images/c.png", "Two"),
            fashion("1", "images/b.jpg", "One"),  # still product 1: kept under --limit 2
            fashion("3", "images/missing.jpg", "Three"),  # past the limit: not even read
        ],
    )

    stdout, stderr = run_import(csv_path, "--no-progress", "--limit", "2", "--dry-run")
    assert stdout.strip() == (
        "Dry run, nothing saved. Products: 2 created, 0 updated, 0 unchanged. "
        "Images: 3 added, 0 unchanged. Rows skipped: 0."
    )
    assert not Product.objects.exists() and not Category.objects.exists()

    run_import(csv_path, "--no-progress", "--limit", "2")
    assert sorted(Product.objects.values_list("external_id", flat=True)) == ["1", "2"]
    assert Product.objects.get(external_id="1").images.count() == 2


@pytest.mark.django_db
def test_unusable_csv_files_stop_with_an_error(tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        run_import(tmp_path / "absent.csv")
    no_image = write_csv(tmp_path / "x.csv", [{"id": "1", "name": "A"}], ["id", "name"])
    with pytest.raises(CommandError, match="needs the columns file or image"):
        run_import(no_image)


@pytest.mark.django_db
@pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"no shared data set at {SHARED_DATA}")
def test_imports_the_shared_fashion_catalog():
    stdout, stderr = run_import(SHARED_DATA / "products.csv", "--limit", "20", "--no-progress")

    assert Product.objects.count() == 20
    assert ProductImage.objects.count() == 20
    assert "Products: 20 created" in stdout and "Rows skipped: 0." in stdout, stderr
    product = Product.objects.order_by("external_id").first()
    assert product.category.name and product.description.startswith("Gender: ")
    assert default_storage.exists(product.images.get().image.name)


def test_defer_embedding_leaves_rows_pending_for_reindex(transactional_db, broker, local_csv):
    run_import(local_csv, "--no-progress", "--defer-embedding")
    assert queued_tasks(broker) == []
    assert set(ProductImage.objects.values_list("embedding_status", flat=True)) == {"pending"}
    call_command("visualsearch_reindex", "--no-progress", stdout=StringIO())
    assert set(ProductImage.objects.values_list("embedding_status", flat=True)) == {"ready"}


def noise_catalog(folder: Path, rows: int) -> Path:
    """``rows`` products, one photo each: the same noise PNG (incompressible, a large file)."""
    (folder / "images").mkdir(parents=True)
    noise = Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3))
    noise.save(folder / "images" / "noise.png")
    products = [
        fashion(f"{folder.name}-{i}", "images/noise.png", f"Noise {i}") for i in range(rows)
    ]
    return write_csv(folder / "products.csv", products)


def peak_bytes(*args: object) -> int:
    """The most memory Python held during one import, above what it held before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run_import(*args)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_catalog(transactional_db, tmp_path):
    """Only a window of images is held, whatever the number of rows.

    Each product commits (``transactional_db``): inside a test's transaction Django would keep
    every product's on-commit callbacks. Embedding is deferred: no tasks to measure.
    """
    run_import(noise_catalog(tmp_path / "warm", 2), "--no-progress", "--defer-embedding")
    small = noise_catalog(tmp_path / "small", 16)
    large = noise_catalog(tmp_path / "large", 128)
    assert (small.parent / "images" / "noise.png").stat().st_size > 190_000

    options = ("--no-progress", "--workers", "1", "--defer-embedding")
    small_peak = peak_bytes(small, *options)
    large_peak = peak_bytes(large, *options)

    assert ProductImage.objects.count() == 2 + 16 + 128
    assert large_peak < 1.5 * small_peak, (small_peak, large_peak)


@pytest.mark.django_db
def test_rows_of_one_product_may_lie_apart(tmp_path, images):
    """The file is streamed, yet a product is still written once, in the order of its first row."""
    csv_path = write_csv(
        tmp_path / "products.csv",
        [
            fashion("1", "images/a.jpg", "One"),
            fashion("2", "images/c.png", "Two"),
            fashion("3", "images/a.jpg", "Three"),
            fashion("1", "images/b.jpg", "One, renamed"),  # fields come from the first row
            fashion("2", "images/c.png", "Two"),  # row 6: a duplicate
        ],
    )

    stdout, stderr = run_import(csv_path, "--no-progress", "--workers", "1")

    assert "row 6: duplicate image images/c.png for id 2; skipped" in stderr
    assert "Products: 3 created" in stdout and "Images: 4 added" in stdout
    products = Product.objects.order_by("pk")
    assert [(p.external_id, p.name) for p in products] == [
        ("1", "One"),
        ("2", "Two"),
        ("3", "Three"),
    ]
    assert list(products[0].images.values_list("position", "source")) == [
        (0, "images/a.jpg"),
        (1, "images/b.jpg"),
    ]
