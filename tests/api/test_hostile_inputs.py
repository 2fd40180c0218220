"""Hostile and odd image files through every surface that accepts one.

Each case of ``CASES`` goes through six surfaces: the admin upload form (ProductImage add
page), the shop's search page, the image-search API, the admin's search by image, the
catalog import and the embedding worker (``visualsearch.ingest.pipeline.embed_images``). A usable
file ends ``ready`` (or 200); anything else is refused with a message that says why (a 400,
a form error, a skipped import row) or, on the worker path, ends ``failed`` with the reason.
Never a 500, a partial row, or a row left ``pending``. docs/reliability.md has the table.
"""

from __future__ import annotations

import html
import io
import random
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO

import numpy as np
import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.urls import reverse
from PIL import Image, features
from rest_framework.test import APIClient

from shop.catalog.models import Product, ProductImage
from tests.conftest import make_image_bytes
from visualsearch.encoders import get_encoder
from visualsearch.ingest.images import MAX_QUERY_ASPECT, MAX_QUERY_SIDE, decode_image
from visualsearch.ingest.pipeline import embed_images
from visualsearch.models import EmbeddingStatus

pytestmark = pytest.mark.django_db

ADMIN_ADD = "/admin/catalog/productimage/add/"
SEARCH_PAGE = "/search/"
API = "/api/search/image/"
#: MAX_IMAGE_BYTES for the "oversize" case (its file is larger).
SMALL_CAP = 50_000


# --- the files ------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 1) -> Image.Image:
    """Incompressible pixels, so that truncating the file cuts the image data."""
    channels = len(Image.new(mode, (1, 1)).getbands())
    data = random.Random(seed).randbytes(size[0] * size[1] * channels)
    return Image.frombytes(mode, size, data)


def png_claiming(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header claims ``width`` x ``height`` RGB pixels (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def exif_rotated_jpeg() -> bytes:
    """A 60x30 JPEG (red left half, blue right) that says: show me rotated 90° clockwise."""
    image = Image.new("RGB", (60, 30), "red")
    image.paste("blue", (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif, quality=95)


def palette_with_transparency() -> bytes:
    image = Image.new("P", (40, 30), 1)
    image.putpalette([255, 255, 255, 200, 30, 30] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 20, 30))
    return encode(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ("red", "lime", "blue")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def heic_header() -> bytes:
    """The start of an iPhone HEIC file (an ISO-BMFF ``ftyp`` box with brand ``heic``)."""
    ftyp = b"ftypheic" + b"\0\0\0\0" + b"mif1heic"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\0\0\0\x22meta" + bytes(200)


SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
    b'<rect width="100" height="100" fill="red"/></svg>'
)
HTML = b"<!DOCTYPE html><html><head><title>Not a photo</title></head><body>hi</body></html>"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n"


@dataclass(frozen=True)
class Case:
    """A file to upload, and what every surface must make of it."""

    id: str
    name: str  # the file name it is uploaded (or imported) under
    build: Callable[[], bytes]
    refused: str | None = None  # regex (case-insensitive) of the reason; None: usable
    size: tuple[int, int] | None = None  # decoded (upright) size of a usable file
    max_bytes: int | None = None  # MAX_IMAGE_BYTES for this case
    # regex of the reason search photos (the search page, the API, the admin's search) are
    # refused for, where catalog images are not: formats that only staff may upload
    search_refused: str | None = None

    @property
    def search_reason(self) -> str | None:
        return self.refused or self.search_refused


AVIF_READABLE = features.check("avif")

CASES = [
    Case("control-jpeg", "photo.jpg", lambda: make_image_bytes("red"), size=(96, 96)),
    Case("zero-bytes", "empty.jpg", lambda: b"", refused=r"empty"),
    Case(
        "truncated-jpeg",
        "cut.jpg",
        lambda: (data := encode(noise((200, 200)), "JPEG"))[: len(data) // 2],
        refused=r"could not be decoded",
    ),
    Case(
        "truncated-png",
        "cut.png",
        lambda: (data := encode(noise((200, 200)), "PNG"))[: len(data) // 2],
        refused=r"could not be decoded",
    ),
    Case(
        "random-bytes-as-jpg",
        "random.jpg",
        lambda: random.Random(7).randbytes(5000),
        refused=r"not an image format",
    ),
    Case("html-as-jpg", "page.jpg", lambda: HTML, refused=r"not an image format.*HTML page"),
    Case("pdf-as-png", "doc.png", lambda: PDF, refused=r"not an image format.*PDF document"),
    Case("svg", "logo.svg", lambda: SVG, refused=r"not an image format.*SVG drawing"),
    Case("eps-as-jpg", "print.jpg", lambda: EPS, refused=r"not an image format.*PostScript"),
    Case(
        "bomb-30000x30000",
        "bomb.png",
        lambda: png_claiming(30_000, 30_000),
        refused=r"more than the 40,000,000 pixels allowed",
    ),
    Case(
        "over-pixel-cap-8000x8000",
        "huge.png",
        lambda: png_claiming(8000, 8000),
        refused=r"8000x8000 pixels, more than the 40,000,000 allowed",
    ),
    Case(
        "wide-20000x1",
        "banner.png",
        lambda: encode(Image.new("RGB", (20_000, 1), "red"), "PNG"),
        size=(20_000, 1),
    ),
    Case(
        "tall-1x20000",
        "pole.png",
        lambda: encode(Image.new("RGB", (1, 20_000), "red"), "PNG"),
        size=(1, 20_000),
    ),
    Case(
        "cmyk-jpeg",
        "cmyk.jpg",
        lambda: encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        size=(40, 30),
    ),
    Case(
        "16-bit-grey-png",
        "deep.png",
        lambda: encode(Image.new("I;16", (40, 30), 50_000), "PNG"),
        size=(40, 30),
    ),
    Case(
        "16-bit-grey-tiff-big-endian",
        "deep.tif",
        lambda: encode(Image.new("I;16B", (40, 30), 50_000), "TIFF"),
        size=(40, 30),
        search_refused=r"not an image format.*Accepted: JPEG, PNG, GIF, WEBP, AVIF\.",
    ),
    Case("palette-transparency", "pal.png", palette_with_transparency, size=(40, 30)),
    Case(
        "la-png",
        "grey-alpha.png",
        lambda: encode(Image.new("LA", (40, 30), (90, 128)), "PNG"),
        size=(40, 30),
    ),
    Case("animated-gif", "anim.gif", animated_gif, size=(32, 32)),
    Case("exif-rotated-jpeg", "rotated.jpg", exif_rotated_jpeg, size=(30, 60)),
    Case("heic", "IMG_0001.heic", heic_header, refused=r"not an image format.*HEIC"),
    Case(
        "avif",
        "photo.avif",
        lambda: encode(Image.new("RGB", (40, 30), "red"), "AVIF"),
        size=(40, 30) if AVIF_READABLE else None,
        refused=None if AVIF_READABLE else r"not an image format",
    ),
    Case(
        "oversize",
        "big.png",
        lambda: encode(noise((150, 150)), "PNG"),
        refused=r"larger than",
        max_bytes=SMALL_CAP,
    ),
]
CASE_IDS = [case.id for case in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request, settings) -> Case:
    case = request.param
    if case.max_bytes:
        settings.VISUALSEARCH = {**settings.VISUALSEARCH, "MAX_IMAGE_BYTES": case.max_bytes}
    return case


@pytest.fixture(autouse=True)
def no_throttle(settings):
    """The matrix sends more searches than a shopper may; throttling has its own test."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "API_THROTTLE_CLASSES": []}
    cache.clear()


@pytest.fixture
def product(make_product):
    """A product with a ready image, so that searches have something to find."""
    product = make_product(color="red")
    embed_images(product.images.values_list("pk", flat=True))
    return product


def upload(case: Case, data: bytes | None = None) -> SimpleUploadedFile:
    return SimpleUploadedFile(case.name, case.build() if data is None else data, "image/jpeg")


def page_text(response) -> str:
    return html.unescape(response.content.decode())


def assert_reason(case: Case, text: str, reason: str | None = None) -> None:
    reason = reason or case.refused
    assert re.search(reason, text, re.IGNORECASE | re.DOTALL), text[-3000:]


# --- the decoder itself ----------------------------------------------------------------------


def test_every_case_file_is_what_it_claims(case):
    data = case.build()
    if case.id == "oversize":
        assert len(data) > SMALL_CAP
    if case.id.startswith(("bomb", "over-pixel")):
        assert len(data) < 200  # tiny file, huge claim


def test_decoder_outcome(case):
    from visualsearch.conf import visualsearch_settings
    from visualsearch.ingest.images import InvalidImage, read_limited

    data = case.build()
    try:
        data = read_limited(io.BytesIO(data), visualsearch_settings.MAX_IMAGE_BYTES)
        image = decode_image(data, max_pixels=visualsearch_settings.MAX_IMAGE_PIXELS)
    except InvalidImage as exc:
        assert case.refused, f"{case.id} was refused: {exc}"
        assert_reason(case, str(exc))
        return
    assert not case.refused, f"{case.id} was decoded"
    assert image.mode == "RGB" and image.size == case.size


def test_exif_orientation_is_honoured_by_the_decoder():
    image = decode_image(exif_rotated_jpeg(), max_pixels=10**6)
    assert image.size == (30, 60)  # portrait now
    top, bottom = image.getpixel((15, 5)), image.getpixel((15, 55))
    assert top[0] > 200 and top[2] < 60  # red on top: turned clockwise
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_gives_its_first_frame():
    assert decode_image(animated_gif(), max_pixels=10**6).getpixel((5, 5)) == (255, 0, 0)


def test_palette_transparency_and_la_are_flattened_onto_white():
    pal = decode_image(palette_with_transparency(), max_pixels=10**6)
    assert pal.getpixel((5, 5)) == (255, 255, 255) and pal.getpixel((35, 5)) == (200, 30, 30)
    la = decode_image(encode(Image.new("LA", (4, 4), (0, 0)), "PNG"), max_pixels=10**6)
    assert la.getpixel((0, 0)) == (255, 255, 255)


# --- surface 1: the admin upload form (ProductImage add page) ----------------------------------


def test_admin_upload_form(case, admin_client, make_product):
    """A usable file is saved and embedded; anything else is refused by the form, saying why."""
    product = make_product(images=0)
    response = admin_client.post(
        ADMIN_ADD,
        {"product": product.pk, "image": upload(case), "position": 0, "alt_text": "", "source": ""},
    )
    if case.refused:
        assert response.status_code == 200, response.status_code
        text = page_text(response)
        assert "Please correct the error below." in text
        assert_reason(case, text)
        assert not ProductImage.objects.exists()  # nothing half-saved
        return
    assert response.status_code == 302, page_text(response)[-3000:]
    row = ProductImage.objects.get(product=product)
    assert row.embedding_status == EmbeddingStatus.PENDING
    result = embed_images([row.pk])
    row.refresh_from_db()
    assert result.ready == [row.pk] and row.embedding_status == EmbeddingStatus.READY


# --- surface 2: the shop's search page ----------------------------------------------------------


def test_search_page(case, client, product):
    response = client.post(SEARCH_PAGE, {"image": upload(case)})
    text = page_text(response)
    if case.search_reason:
        assert response.status_code == 400
        assert 'role="alert"' in text
        assert_reason(case, text, case.search_reason)
    else:
        assert response.status_code == 200, text[-3000:]
        assert product.name in text


# --- surface 3: the image-search API --------------------------------------------------------------


def test_image_search_api(case, product):
    response = APIClient().post(API, {"image": upload(case)})
    if case.search_reason:
        assert response.status_code == 400, response.content
        assert list(response.json()) == ["image"]
        assert_reason(case, " ".join(response.json()["image"]), case.search_reason)
    else:
        assert response.status_code == 200, response.content
        assert [item["id"] for item in response.json()["results"]] == [product.pk]


# --- surface 4: the admin's search by image -------------------------------------------------------


def test_admin_search_by_image(case, admin_client, product):
    url = reverse("admin:visualsearch_search")
    response = admin_client.post(url, {"image": upload(case), "limit": 5})
    assert response.status_code == 200
    text = page_text(response)
    if case.search_reason:
        assert "Please correct the error below." in text
        assert_reason(case, text.replace("\xa0", " "), case.search_reason)
    else:
        assert "1 matching product" in text, text[-3000:]


# --- surface 5: the catalog import --------------------------------------------------------------


def test_catalog_import(case, tmp_path):
    """A usable file is imported and embedded; anything else is reported and skipped."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / case.name).write_bytes(case.build())
    csv_path = tmp_path / "products.csv"
    csv_path.write_text(f"id,image,name\nP1,images/{case.name},Odd file\n")
    stdout, stderr = StringIO(), StringIO()
    call_command("import_catalog", str(csv_path), "--no-progress", stdout=stdout, stderr=stderr)
    if case.refused:
        assert re.search(r"^row 2: .*; skipped$", stderr.getvalue(), re.MULTILINE)
        assert_reason(case, stderr.getvalue())
        assert "Rows skipped: 1." in stdout.getvalue()
        assert not Product.objects.exists() and not ProductImage.objects.exists()
        return
    assert "Images: 1 added" in stdout.getvalue(), stderr.getvalue()
    row = ProductImage.objects.get()
    assert embed_images([row.pk]).ready == [row.pk]


def test_catalog_import_with_a_wrong_image_column_stops_with_a_message(tmp_path):
    csv_path = tmp_path / "products.csv"
    csv_path.write_text("id,picture,name\nP1,images/a.jpg,A\n")
    with pytest.raises(CommandError, match="needs the columns file or image"):
        call_command("import_catalog", str(csv_path), stdout=StringIO(), stderr=StringIO())


# --- surface 6: the embedding worker ------------------------------------------------------------


def test_worker_path(case, make_product):
    """A row whose file is unusable ends ``failed`` with the reason; never stays ``pending``."""
    product = make_product(images=0)
    row = ProductImage.objects.create(product=product, image=ContentFile(case.build(), case.name))
    result = embed_images([row.pk])
    row.refresh_from_db()
    if case.refused:
        assert row.embedding_status == EmbeddingStatus.FAILED and row.embedding is None
        assert result.failed == {row.pk: row.embedding_error}
        assert_reason(case, row.embedding_error)
    else:
        assert row.embedding_status == EmbeddingStatus.READY, row.embedding_error
        assert np.isclose(np.linalg.norm(row.embedding), 1.0, atol=1e-3)


@pytest.mark.slow
def test_a_real_worker_gets_through_every_file(celery_worker_process, make_product):
    """All the files at once through a real Celery worker: no hang, no retry loop, no crash."""
    import time

    product = make_product(images=0)
    rows = {}
    for position, case in enumerate(c for c in CASES if not c.max_bytes):
        rows[case.id] = ProductImage.objects.create(
            product=product, position=position, image=ContentFile(case.build(), case.name)
        ).pk  # enqueued when the (autocommitted) save commits
    deadline = time.monotonic() + 90
    pending = ProductImage.objects.filter(embedding_status=EmbeddingStatus.PENDING)
    while pending.exists() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not pending.exists(), celery_worker_process.log.read_text()[-3000:]
    assert celery_worker_process.poll() is None  # still running
    for case in (c for c in CASES if not c.max_bytes):
        row = ProductImage.objects.get(pk=rows[case.id])
        if case.refused:
            assert row.embedding_status == EmbeddingStatus.FAILED, case.id
            assert_reason(case, row.embedding_error)
        else:
            assert row.embedding_status == EmbeddingStatus.READY, (case.id, row.embedding_error)
    log = celery_worker_process.log.read_text()
    assert "Traceback" not in log and "retry" not in log.lower(), log[-3000:]


def test_worker_bounds_images_before_the_encoder(make_product, monkeypatch):
    """Long thin catalog images reach the encoder shrunk and padded, as query photos do."""
    encoder = get_encoder()
    seen = []
    original = encoder.encode_images

    def spy(images):
        seen.extend(image.size for image in images)
        return original(images)

    monkeypatch.setattr(encoder, "encode_images", spy)
    product = make_product(images=0)
    for size in [(20_000, 1), (1, 20_000), (5000, 3000)]:
        data = encode(Image.new("RGB", size, "red"), "PNG")
        ProductImage.objects.create(product=product, image=ContentFile(data, "long.png"))
    result = embed_images(product.images.values_list("pk", flat=True))
    assert len(result.ready) == 3
    assert sorted(seen) == [(256, 1024), (1024, 256), (1024, 614)]
    for width, height in seen:
        assert max(width, height) <= MAX_QUERY_SIDE
        assert max(width, height) <= MAX_QUERY_ASPECT * min(width, height)


def test_worker_embeds_an_exif_rotated_photo_upright(make_product):
    """The rotated file and the same photo stored upright get the same vector."""
    upright = Image.new("RGB", (30, 60), "blue")
    upright.paste("red", (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored pixels are turned back by 90°, to be shown upright
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    product = make_product(images=0)
    rotated = ProductImage.objects.create(
        product=product, image=ContentFile(encode(stored, "PNG", exif=exif), "r.png")
    )
    plain = ProductImage.objects.create(
        product=product, image=ContentFile(encode(upright, "PNG"), "u.png"), position=1
    )
    assert len(embed_images([rotated.pk, plain.pk]).ready) == 2
    rotated.refresh_from_db()
    plain.refresh_from_db()
    assert np.allclose(rotated.embedding, plain.embedding, atol=1e-5)


# --- wrong multipart field names ------------------------------------------------------------------


def test_wrong_field_names_are_refused_with_a_message(admin_client, client, make_product, product):
    photo = SimpleUploadedFile("photo.jpg", make_image_bytes(), "image/jpeg")
    added = admin_client.post(
        ADMIN_ADD, {"product": product.pk, "picture": photo, "position": 0, "source": ""}
    )
    assert added.status_code == 200 and "This field is required." in page_text(added)
    assert ProductImage.objects.count() == 1  # the fixture's image only

    page = client.post(SEARCH_PAGE, {"photo": SimpleUploadedFile("p.jpg", make_image_bytes())})
    assert page.status_code == 400
    assert "Choose a photo or type a description to search." in page_text(page)

    api = APIClient().post(API, {"file": SimpleUploadedFile("p.jpg", make_image_bytes())})
    assert api.status_code == 400 and "No file was submitted." in api.json()["image"][0]

    admin_search = admin_client.post(
        reverse("admin:visualsearch_search"),
        {"photo": SimpleUploadedFile("p.jpg", b"x"), "limit": 5},
    )
    assert admin_search.status_code == 200
    assert "This field is required." in page_text(admin_search)


# --- invalid crop boxes (search page and API; the other surfaces take no box) --------------------

CROPS = [
    pytest.param({"crop_x": 0}, r"needs x, y, width and height|give all four", id="partial"),
    pytest.param(
        {"crop_x": -5, "crop_y": 0, "crop_width": 20, "crop_height": 20},
        r"greater than or equal to 0",
        id="negative",
    ),
    pytest.param(
        {"crop_x": 0, "crop_y": 0, "crop_width": 4, "crop_height": 20},
        r"at least 8|greater than or equal to 8",
        id="too-small",
    ),
    pytest.param(
        {"crop_x": 80, "crop_y": 0, "crop_width": 40, "crop_height": 40},
        r"reaches outside the 96x96 image",
        id="outside",
    ),
    pytest.param(
        {"crop_x": 0, "crop_y": 0, "crop_width": "wide", "crop_height": 20},
        r"whole number|valid integer",
        id="not-a-number",
    ),
    pytest.param(
        {"crop_x": 0, "crop_y": 0, "crop_width": 10**30, "crop_height": 20},
        r"less than or equal to|reaches outside|valid integer|whole number",
        id="huge",
    ),
]


@pytest.mark.parametrize(("box", "reason"), CROPS)
@pytest.mark.parametrize("surface", ["search-page", "api"])
def test_invalid_crop_boxes_are_400(surface, box, reason, product):
    photo = SimpleUploadedFile("p.jpg", make_image_bytes(size=(96, 96)), "image/jpeg")
    if surface == "api":
        response = APIClient().post(API, {"image": photo, **box})
        text = str(response.json())
    else:
        from django.test import Client

        response = Client().post(SEARCH_PAGE, {"image": photo, **box})
        text = page_text(response)
    assert response.status_code == 400, text[-2000:]
    assert re.search(reason, text, re.IGNORECASE), text[-2000:]


def test_crop_box_is_in_pixels_of_the_upright_photo_on_both_surfaces(client, product):
    """(0, 40, 20, 20) fits the 30x60 upright photo, not the 60x30 stored pixels."""
    box = {"crop_x": 0, "crop_y": 40, "crop_width": 20, "crop_height": 20}
    photo = SimpleUploadedFile("r.jpg", exif_rotated_jpeg(), "image/jpeg")
    assert client.post(SEARCH_PAGE, {"image": photo, **box}).status_code == 200
    photo = SimpleUploadedFile("r.jpg", exif_rotated_jpeg(), "image/jpeg")
    assert APIClient().post(API, {"image": photo, **box}).status_code == 200


def test_crop_without_a_photo_is_400(client, product):
    box = {"crop_x": 0, "crop_y": 0, "crop_width": 20, "crop_height": 20, "q": "red"}
    response = client.post(SEARCH_PAGE, box)
    assert response.status_code == 400 and "Choose a photo to crop." in page_text(response)
