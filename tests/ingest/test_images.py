"""Safe decoding of uploads: clear reasons for bad data, RGB out for every odd mode."""

import io

import pytest
from PIL import Image

from tests.conftest import make_image_bytes
from visualsearch.ingest.images import InvalidImage, decode_image, read_limited

MAX = 40_000_000


def encode(image, fmt="PNG", **kwargs):
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"GIF89a-nonsense" * 4, "not an image format"),
        (b"%PDF-1.4 not really", "not an image format"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not an image format"),
    ],
)
def test_bad_data_has_a_reason(data, message):
    with pytest.raises(InvalidImage, match=message):
        decode_image(data, max_pixels=MAX)


def test_truncated_jpeg():
    with pytest.raises(InvalidImage, match="could not be decoded"):
        decode_image(make_image_bytes()[:200], max_pixels=MAX)


def test_decompression_bomb_is_refused_from_the_header():
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(InvalidImage, match="pixels"):
        decode_image(bomb, max_pixels=MAX)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("CMYK", (20, 10), (0, 255, 0, 0)),
        Image.new("I;16", (20, 10), 40000),
        Image.new("L", (20, 10), 128),
        Image.new("LA", (20, 10), (128, 0)),
        Image.new("RGBA", (20, 10), (255, 0, 0, 0)),
        Image.new("P", (20, 10), 3),
    ],
    ids=lambda image: image.mode,
)
def test_every_mode_becomes_rgb(image):
    fmt = "JPEG" if image.mode == "CMYK" else "TIFF" if image.mode == "I;16" else "PNG"
    decoded = decode_image(encode(image, fmt), max_pixels=MAX)
    assert decoded.mode == "RGB" and decoded.size == (20, 10)


def test_transparency_is_flattened_onto_white():
    decoded = decode_image(encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), max_pixels=MAX)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif), max_pixels=MAX)
    assert decoded.size == (20, 40)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("P", (10, 10), i) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(out.getvalue(), max_pixels=MAX).size == (10, 10)


def test_read_limited_refuses_oversize():
    assert read_limited(io.BytesIO(b"x" * 10), 10) == b"x" * 10
    with pytest.raises(InvalidImage, match="larger"):
        read_limited(io.BytesIO(b"x" * 11), 10)
