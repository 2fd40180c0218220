"""Property-based tests (hypothesis) of the decoder, the crop and the encoder fit.

Whatever the bytes, ``decode_image`` returns an RGB image within the pixel cap or raises
``InvalidImage``, never anything else; every mode and format it accepts comes out RGB at its
size; a crop box either crops exactly or raises ``InvalidCrop``. No database, a few seconds.
"""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from visualsearch.ingest.images import (
    MAX_QUERY_ASPECT,
    MAX_QUERY_SIDE,
    MIN_CROP_SIDE,
    InvalidCrop,
    InvalidImage,
    crop_image,
    decode_image,
    fit_for_encoder,
)

# Pillow warns about the corrupt files these tests make; the decoder's answer is what counts.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_PIXELS = 64 * 64
#: Examples per property: 150 keeps the suite fast; raise it for a deeper search, e.g.
#: VISUALSEARCH_FUZZ_EXAMPLES=5000 pytest tests/ingest/test_decoder_properties.py
FUZZ = settings(
    max_examples=int(os.environ.get("VISUALSEARCH_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,  # no .hypothesis/ folder in the project
    suppress_health_check=[HealthCheck.too_slow],
)

#: Modes each format can store (what Pillow writes), to build valid files of every kind.
MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["P", "L"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I;16B", "I", "F", "YCbCr"],
}
if features.check("avif"):
    MODES["AVIF"] = ["RGB", "RGBA"]
FORMAT_MODES = [(fmt, mode) for fmt, modes in MODES.items() for mode in modes]


def encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def assert_decodes_or_refuses(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image | None:
    """The property itself: an RGB image within the cap, or InvalidImage; nothing else."""
    try:
        image = decode_image(data, max_pixels=max_pixels)
    except InvalidImage as exc:
        assert str(exc).strip()  # a reason for the user
        return None
    assert image.mode == "RGB"
    assert image.width >= 1 and image.height >= 1
    assert image.width * image.height <= max_pixels
    image.tobytes()  # the pixels really are there
    return image


@st.composite
def valid_images(draw, max_side: int = 40) -> tuple[bytes, tuple[int, int], str, str]:
    """A small valid file of some format and mode: (bytes, size, format, mode)."""
    fmt, mode = draw(st.sampled_from(FORMAT_MODES))
    size = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    seed = draw(st.binary(min_size=1, max_size=16))
    if mode == "F" or mode.startswith("I"):
        image = Image.new(mode, size, int.from_bytes(seed[:2], "big") % 65536)
    else:  # a repeated pattern of the seed's bytes (at least enough for any packing)
        raw_size = len(Image.new(mode, (1, 1)).tobytes()) * size[0] * size[1]
        image = Image.frombytes(mode, size, (seed * (raw_size // len(seed) + 1))[:raw_size])
    return encode(image, fmt), size, fmt, mode


# --- arbitrary and mutated bytes ------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
@example(b"")
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"GIF89a")
@example(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
@example(b"II*\x00")
@example(b"BM")
def test_arbitrary_bytes_decode_or_are_refused(data):
    assert_decodes_or_refuses(data)


@st.composite
def mutated_images(draw) -> bytes:
    """A valid file, then truncated, bit-flipped, overwritten or spliced with random bytes."""
    data = bytearray(draw(valid_images())[0])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "truncate":
            del data[at:]
        elif action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[at : at + draw(st.integers(1, 32))]
    return bytes(data)


@FUZZ
@given(mutated_images())
def test_mutated_images_decode_or_are_refused(data):
    assert_decodes_or_refuses(data)


@FUZZ
@given(valid_images(), st.integers(0, 40), st.integers(0, 40))
def test_header_size_lies_decode_or_are_refused(file, width, height):
    """A PNG or BMP whose header claims another size than its data holds."""
    data, _size, fmt, _mode = file
    data = bytearray(data)
    if fmt == "PNG":
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    elif fmt == "BMP":
        data[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little", signed=True)
    assert_decodes_or_refuses(bytes(data))


# --- every valid format and mode, every size --------------------------------------------------


@FUZZ
@given(valid_images())
def test_valid_files_of_every_format_and_mode_come_out_rgb(file):
    data, size, fmt, mode = file
    image = decode_image(data, max_pixels=MAX_PIXELS)
    assert image.mode == "RGB" and image.size == size, (fmt, mode)


@FUZZ
@given(valid_images(max_side=90), st.integers(1, 90 * 90))
def test_the_pixel_cap_is_exact(file, max_pixels):
    data, (width, height), _fmt, _mode = file
    if width * height > max_pixels:
        with pytest.raises(InvalidImage, match="pixels"):
            decode_image(data, max_pixels=max_pixels)
    else:
        assert decode_image(data, max_pixels=max_pixels).size == (width, height)


# --- crop boxes and the encoder fit -----------------------------------------------------------

coordinates = st.integers(-50, 150) | st.integers(-(10**12), 10**12)


@FUZZ
@given(st.integers(1, 120), st.integers(1, 120), coordinates, coordinates, coordinates, coordinates)
def test_crop_boxes_crop_exactly_or_raise_invalid_crop(width, height, x, y, box_w, box_h):
    image = Image.new("RGB", (width, height))
    image.putdata([(i % 251, i // 251 % 251, 7) for i in range(width * height)])
    fits = (
        x >= 0
        and y >= 0
        and box_w >= MIN_CROP_SIDE
        and box_h >= MIN_CROP_SIDE
        and x + box_w <= width
        and y + box_h <= height
    )
    try:
        cropped = crop_image(image, (x, y, box_w, box_h))
    except InvalidCrop as exc:
        assert not fits and str(exc)
        return
    assert fits
    assert cropped.size == (box_w, box_h)
    assert cropped.getpixel((0, 0)) == image.getpixel((x, y))
    last = (box_w - 1, box_h - 1)
    assert cropped.getpixel(last) == image.getpixel((x + last[0], y + last[1]))


@FUZZ
@given(st.integers(1, 30_000), st.integers(1, 30_000))
def test_encoder_fit_bounds_every_size(width, height):
    width = min(width, max(1, 4_000_000 // height))  # 4 MB of grey at most per example
    fitted = fit_for_encoder(Image.new("L", (width, height)))
    long_side, short_side = max(fitted.size), min(fitted.size)
    assert long_side <= MAX_QUERY_SIDE and short_side >= 1
    assert long_side // MAX_QUERY_ASPECT <= short_side
