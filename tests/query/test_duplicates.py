"""Near-duplicate images: copies grouped, look-alikes not, the command's output and errors."""

from __future__ import annotations

import io
import json

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from PIL import Image, ImageDraw, ImageOps

from shop.catalog.models import ProductImage
from visualsearch.conf import DEFAULTS
from visualsearch.ingest.pipeline import embed_images
from visualsearch.query import pixelcheck
from visualsearch.query.duplicates import (
    Link,
    find_duplicates,
    group_links,
    remembered,
    resolve,
)

pytestmark = pytest.mark.django_db

#: Low enough for the tiny test CLIP to make every pair below a candidate: the pixel check
#: then decides, as it does for the real encoder's look-alikes.
LOOSE = 0.05
DIFFERENCE, NEIGHBOURS = DEFAULTS["DUPLICATE_PIXEL_DIFFERENCE"], DEFAULTS["DUPLICATE_NEIGHBOURS"]


def shirt(colour: str = "crimson", pattern: str = "stripes") -> Image.Image:
    """A product-like photo: a patterned shirt on white, with a badge on one side only."""
    image = Image.new("RGB", (200, 240), "white")
    draw = ImageDraw.Draw(image)
    body = [(50, 40), (80, 30), (120, 30), (150, 40), (185, 80), (160, 100), (150, 90),
            (150, 215), (50, 215), (50, 90), (40, 100), (15, 80)]  # fmt: skip
    draw.polygon(body, fill=colour, outline="black")
    for y in range(50, 210, 14):
        if pattern == "stripes":
            draw.line((52, y, 148, y), fill="white", width=3)
        else:
            for x in range(60, 145, 14):
                draw.ellipse((x, y, x + 5, y + 5), fill="white")
    draw.rectangle((62, 62, 84, 84), fill="gold", outline="black")  # the badge: left only
    return image


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def copies(image: Image.Image) -> dict[str, bytes]:
    """What staff re-upload: a re-encode, a smaller size, a 5 % crop, a mirror image."""
    width, height = image.size
    return {
        "jpeg": jpeg(image, 30),
        "resize": jpeg(image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)),
        "crop": jpeg(image.crop((4, 9, width - 6, height - 3))),
        "mirror": jpeg(ImageOps.mirror(image)),
    }


@pytest.fixture(autouse=True)
def _forget_remembered_groups():
    """Groups are remembered in the cache by parameters, not by test: start afresh."""
    caches["default"].clear()
    yield
    caches["default"].clear()


@pytest.fixture
def catalog(make_product):
    """An original, its four copies (each its own product), a colour variant of it, the same
    shirt with dots, and a second photo on the original's product itself."""
    original = shirt()
    products = {"original": make_product("crimson", "shirt", image_bytes=jpeg(original))}
    for name, data in copies(original).items():
        products[name] = make_product("crimson", f"shirt-{name}", image_bytes=data)
    products["variant"] = make_product("navy", "shirt", image_bytes=jpeg(shirt("navy")))
    products["dots"] = make_product("crimson", "dots", image_bytes=jpeg(shirt(pattern="dots")))
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    assert not ProductImage.objects.exclude(embedding_status="ready").exists()
    return products


def image_pk(product) -> int:
    return product.images.get().pk


def test_copies_are_one_group_and_look_alikes_stay_out(catalog):
    groups = find_duplicates(LOOSE, neighbours=10)
    assert len(groups) == 1
    expected = ["original", "jpeg", "resize", "crop", "mirror"]
    assert groups[0].images == sorted(image_pk(catalog[name]) for name in expected)
    assert set(groups[0].product_pks) == {catalog[name].pk for name in expected}
    assert groups[0].products[image_pk(catalog["mirror"])] == catalog["mirror"].pk
    assert 0 < groups[0].difference <= DIFFERENCE and groups[0].similarity >= LOOSE


def test_the_vectors_alone_would_group_the_look_alikes(catalog):
    """What the pixel check is for: without it the colour variant and the dotted shirt,
    as near in vector space as the copies, join the group."""
    (group,) = find_duplicates(LOOSE, neighbours=10, pixel_check=False)
    assert {image_pk(catalog["variant"]), image_pk(catalog["dots"])} <= set(group.images)
    assert group.difference is None


def test_pixel_differences_of_copies_are_small_and_of_look_alikes_large():
    prepared = {
        name: pixelcheck.prepare(pixelcheck.canvas(Image.open(io.BytesIO(data))))
        for name, data in {**copies(shirt()), "original": jpeg(shirt())}.items()
    }
    variant = pixelcheck.prepare(pixelcheck.canvas(shirt("navy")))
    dots = pixelcheck.prepare(pixelcheck.canvas(shirt(pattern="dots")))
    for name in ("jpeg", "resize", "crop", "mirror"):
        assert pixelcheck.difference(prepared["original"], prepared[name]) < 0.02, name
    assert pixelcheck.difference(prepared["original"], variant) > 0.1
    assert pixelcheck.difference(prepared["original"], dots) > 0.05
    # The badge is on one side: the mirror image matches only because mirrors are tried.
    mirror = prepared["mirror"]
    assert mirror.fine[0].tolist() != prepared["original"].fine[0].tolist()


def test_an_identical_photo_on_the_same_product_is_a_duplicate_too(make_product):
    product = make_product(image_bytes=jpeg(shirt("teal")), images=2)
    make_product(image_bytes=jpeg(shirt("orange", "dots")))
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    (group,) = find_duplicates(LOOSE)
    assert group.images == sorted(product.images.values_list("pk", flat=True))
    assert group.product_pks == [product.pk]


def test_an_unreadable_file_is_nobodys_duplicate(catalog):
    copy = ProductImage.objects.get(pk=image_pk(catalog["jpeg"]))
    copy.image.storage.delete(copy.image.name)
    (group,) = find_duplicates(LOOSE)
    assert copy.pk not in group.images and len(group.images) == 4


def test_candidates_come_through_the_hnsw_index(catalog):
    with CaptureQueriesContext(connection) as queries:
        find_duplicates(LOOSE, pixel_check=False)
    sql = [q["sql"] for q in queries.captured_queries]
    (knn,) = [statement for statement in sql if "LATERAL" in statement]
    (settings,) = [statement for statement in sql if "SET LOCAL hnsw.ef_search" in statement]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(settings)  # as the statement ran: no sort, the index walks instead
        cursor.execute("EXPLAIN " + knn)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using productimage_hnsw" in plan, plan
    assert "Order By: (embedding <=> a.embedding)" in plan


def test_union_find_joins_chains_and_keeps_apart_the_rest():
    links = [Link(1, 2, 0.99), Link(2, 3, 0.95), Link(7, 9, 0.9), Link(3, 1, 0.97)]
    groups = group_links(links)
    assert [group.images for group in groups] == [[1, 2, 3], [7, 9]]
    assert groups[0].similarity == 0.95 and groups[1].products == {7: None, 9: None}


def test_bad_arguments_and_settings_say_what_is_wrong(settings):
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\], got 7"):
        find_duplicates(7)
    with pytest.raises(ValueError, match="neighbours must be an integer in 1..1000"):
        find_duplicates(neighbours=0)
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "DUPLICATE_PIXEL_DIFFERENCE": "low"}
    with pytest.raises(ImproperlyConfigured, match="DUPLICATE_PIXEL_DIFFERENCE"):
        resolve()
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "DUPLICATE_PIXEL_DIFFERENCE": None}
    assert resolve(0.9) == (0.9, None, NEIGHBOURS)  # None: no pixel check


# --- manage.py visualsearch_duplicates ----------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("visualsearch_duplicates", "--no-progress", *args, stdout=out)
    return out.getvalue()


def test_command_prints_the_groups_with_their_products(catalog):
    out = run("--threshold", str(LOOSE))
    assert out.startswith("1 group(s) of near-duplicate images, 5 images in all")
    assert "Group 1: 5 images of 5 product(s)" in out
    assert f"'{catalog['mirror'].name}'" in out and "navy" not in out
    assert f"image {image_pk(catalog['crop'])}  product {catalog['crop'].pk}" in out
    # What the admin page shows next: the groups are remembered with their parameters.
    assert len(remembered(LOOSE, DIFFERENCE, NEIGHBOURS)["groups"]) == 1


def test_command_json_and_vectors_only(catalog):
    found = json.loads(run("--threshold", str(LOOSE), "--json"))
    assert found["threshold"] == LOOSE and found["pixel_difference"] == DIFFERENCE
    (group,) = found["groups"]
    names = {catalog[name].name for name in ("original", "jpeg", "resize", "crop", "mirror")}
    assert {image["name"] for image in group["images"]} == names
    assert all(image["file"].startswith("products/") for image in group["images"])
    loose = json.loads(run("--threshold", str(LOOSE), "--json", "--no-pixel-check"))
    assert len(loose["groups"][0]["images"]) == 7 and loose["pixel_difference"] is None


def test_command_across_products_leaves_out_a_products_own_copies(make_product):
    make_product(image_bytes=jpeg(shirt("teal")), images=2)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    assert "1 group(s)" in run("--threshold", str(LOOSE))
    assert run("--threshold", str(LOOSE), "--across-products").startswith("0 group(s)")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--threshold", "7"], "--threshold must be between 0 (excluded) and 1, got 7."),
        (["--threshold", "0"], "--threshold must be between 0 (excluded) and 1, got 0."),
        (["--pixel-difference", "1.5"], "--pixel-difference must be between 0 (excluded) and 1"),
        (["--neighbours", "0"], "--neighbours must be between 1 and 1000, got 0."),
        (["--pixel-difference", "0.1", "--no-pixel-check"], "exclude each other"),
    ],
)
def test_command_refuses_bad_options(args, message):
    with pytest.raises(CommandError) as error:
        run(*args)
    assert message in str(error.value)


def test_command_without_vectors_says_to_reindex(make_product):
    make_product()  # pending: never embedded
    with pytest.raises(CommandError, match="visualsearch_reindex"):
        run()
