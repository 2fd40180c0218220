"""Safe image decoding: bytes in, an RGB ``PIL.Image`` out, or ``InvalidImage`` with a reason."""

from __future__ import annotations

import base64
import io
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError


class InvalidImage(ValueError):
    """The data is not an image this app can use; the message says why, for users."""


class InvalidCrop(InvalidImage):
    """The crop box does not fit the image (too small, or reaching outside it)."""


#: The formats decoded (Pillow's names): what shops upload and phones and cameras produce
#: (MPO is a JPEG with a second picture). Pillow's other readers (EPS through Ghostscript,
#: PSD, FITS…) are never reached by uploads, which keeps the attack surface small.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "AVIF", "BMP", "TIFF")
#: The formats of search photos (anonymous uploads): what phones and browsers make. Pillow
#: decodes run-length BMPs in Python, and a TIFF's strip table is as long as the file allows.
QUERY_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "AVIF")


def read_limited(fileobj: BinaryIO, max_bytes: int) -> bytes:
    """Read at most ``max_bytes`` from ``fileobj``; ``InvalidImage`` if there is more."""
    data = fileobj.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidImage(f"The file is larger than the {_size(max_bytes)} limit.")
    return data


def _size(count: int) -> str:
    """``20 MB``, ``1.5 MB`` or ``100,000 bytes``."""
    return f"{count / 2**20:.3g} MB" if count >= 2**20 else f"{count:,} bytes"


def decode_image(data: bytes, *, max_pixels: int, formats: Sequence[str] = FORMATS) -> Image.Image:
    """Decode ``data`` into an RGB image, honouring EXIF orientation, first frame only.

    Only ``formats`` are read. Checks the pixel count from the header before decoding
    (decompression bombs), flattens transparency onto white, and converts CMYK, 16-bit,
    palette and grey images to RGB. Whatever goes wrong raises ``InvalidImage`` saying why.
    """
    readable = _readable(formats)
    with _reasons(data, readable, max_pixels):
        image = _open(data, readable, max_pixels)
        image.seek(0)
        image.load()
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not reject an otherwise good photo
        pass
    try:
        return to_rgb(image)
    except Exception as exc:
        raise InvalidImage(f"The colour mode {image.mode} cannot be converted ({exc}).") from None


def _readable(formats: Sequence[str]) -> list[str]:
    Image.init()  # registers every plugin, so that the names below can be checked
    return [name for name in formats if name in Image.OPEN]


def _open(data: bytes, readable: list[str], max_pixels: int) -> Image.Image:
    """``data`` opened (nothing decoded yet), its header size within ``max_pixels``."""
    if not data:
        raise InvalidImage("The file is empty.")
    image = Image.open(io.BytesIO(data), formats=readable)
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage("The image has no pixels.")
    if width * height > max_pixels:
        raise InvalidImage(
            f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed."
        )
    return image


@contextmanager
def _reasons(data: bytes, readable: list[str], max_pixels: int) -> Iterator[None]:
    """Whatever opening or decoding ``data`` raises, as ``InvalidImage`` saying why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InvalidImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidImage(f"The image has more than the {max_pixels:,} pixels allowed.") from None
    except UnidentifiedImageError:
        kind = sniff(data)
        raise InvalidImage(
            "The file is not an image format that can be read."
            + (f" It looks like {kind}." if kind else "")
            + f" Accepted: {', '.join(name for name in readable if name != 'MPO')}."
        ) from None
    except Exception as exc:  # hostile data can trip any error inside a decoder
        detail = str(exc) or type(exc).__name__
        raise InvalidImage(f"The image could not be decoded ({detail}).") from None


#: Leading bytes of files that people take for images but Pillow cannot (or must not) read.
_SIGNATURES = [
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript file"),
    (b"8BPS", "a Photoshop file"),
    (b"PK\x03\x04", "a ZIP archive"),
]
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1"}


def sniff(data: bytes) -> str | None:
    """What an unreadable file seems to be ("a PDF document"…), for error messages; or None."""
    if data[4:8] == b"ftyp":
        if data[8:12] in _HEIF_BRANDS:
            return "a HEIC/HEIF photo"
        return "a video or other ISO media file"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in head:
        return "an SVG drawing"
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "an HTML page"
    if head.startswith(b"<"):
        return "an XML or HTML document"
    return None


#: Photos (queries and catalog images alike) are shrunk to this longest side and padded to at
#: most this aspect ratio before encoding: a 40000x1 sliver would otherwise become gigabytes in
#: the encoder's resize (CLIP) or padding to a square (EfficientNet).
MAX_QUERY_SIDE = 1024
MAX_QUERY_ASPECT = 4

#: Smallest crop side in pixels: anything smaller carries too little to search with.
MIN_CROP_SIDE = 8


def crop_image(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """Cut ``box`` = ``(x, y, width, height)`` in pixels of the (EXIF-rotated) image.

    ``None`` returns the image unchanged; a box that is too small or reaches outside the
    image raises ``InvalidImage`` saying which.
    """
    if box is None:
        return image
    check_crop(image.size, box)
    x, y, width, height = (int(value) for value in box)
    return image.crop((x, y, x + width, y + height))


def check_crop(size: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    """``InvalidCrop`` unless ``box`` = ``(x, y, width, height)`` fits an image of ``size``."""
    x, y, width, height = (int(value) for value in box)
    if width < MIN_CROP_SIDE or height < MIN_CROP_SIDE:
        raise InvalidCrop(
            f"The crop box is {width}x{height} pixels; each side must be at least {MIN_CROP_SIDE}."
        )
    if x < 0 or y < 0 or x + width > size[0] or y + height > size[1]:
        raise InvalidCrop(
            f"The crop box (x={x}, y={y}, width={width}, height={height}) reaches outside the "
            f"{size[0]}x{size[1]} image."
        )


def open_query_image(
    upload: bytes | BinaryIO,
    *,
    crop: tuple[int, int, int, int] | None = None,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """A search upload (bytes or a file) as an RGB image, cropped to ``crop`` if given and
    shrunk for the encoder: the one place uploads are opened.

    Within ``MAX_IMAGE_BYTES`` and, by its header, ``MAX_IMAGE_PIXELS``; decoded within
    ``max_pixels`` (``MAX_QUERY_PIXELS``), so that an anonymous upload costs a bounded
    amount of memory and CPU: a JPEG is decoded at the reduced scale the encoder needs
    (``Image.draft``), other formats are refused above the cap, and the conversion to RGB
    and the shrinking go a tile at a time (:func:`decode_query`).
    """
    from visualsearch.conf import visualsearch_settings

    max_bytes = int(visualsearch_settings.MAX_IMAGE_BYTES if max_bytes is None else max_bytes)
    if max_pixels is None:
        max_pixels = int(visualsearch_settings.MAX_QUERY_PIXELS)
    data = upload if isinstance(upload, bytes) else read_limited(upload, max_bytes)
    if len(data) > max_bytes:
        raise InvalidImage(f"The file is larger than the {_size(max_bytes)} limit.")
    image = decode_query(
        data,
        crop=crop,
        max_pixels=int(visualsearch_settings.MAX_IMAGE_PIXELS),
        max_decoded=int(max_pixels),
    )
    return fit_for_encoder(image)


#: Formats whose decoders hand the pixels over through whole-image buffers of their own
#: (libwebp, libavif), and progressive JPEGs, which keep every DCT coefficient of the full
#: size whatever the scale: each of their pixels counts this many times against the cap.
_BUFFERED_FORMATS = {"WEBP": 3, "AVIF": 3}
_PROGRESSIVE_JPEG = 2
#: Pixels converted at a time (a tile) when a decoded image is turned into a smaller RGB one.
_TILE_SIDE = 1024


def decode_query(
    data: bytes,
    *,
    max_pixels: int,
    max_decoded: int,
    crop: tuple[int, int, int, int] | None = None,
    formats: Sequence[str] = QUERY_FORMATS,
) -> Image.Image:
    """``data`` decoded into an upright RGB image no larger than the encoder needs (the
    ``crop`` box, in pixels of the upright image, at up to ``MAX_QUERY_SIDE``).

    ``max_pixels`` bounds the header's size, ``max_decoded`` the pixels actually decoded: a
    JPEG is decoded at a reduced scale (``Image.draft``), other formats in full, so they
    are refused above it. ``InvalidImage`` (``InvalidCrop``) saying why.
    """
    readable = _readable(formats)
    check_blocks(data)
    with _reasons(data, readable, max_pixels):
        image = _open(data, readable, max_pixels)
        stored = image.size
        factor = max(1.0, _needed_reduction(stored, crop))
        if image.format in {"JPEG", "MPO"}:
            image.draft(None, (math.ceil(stored[0] / factor), math.ceil(stored[1] / factor)))
        weight, counted = _decode_cost(image, stored)
        if weight * counted[0] * counted[1] > max_decoded:
            raise InvalidImage(
                f"The photo is {stored[0]}x{stored[1]} pixels, more than a search photo may "
                f"have ({max_decoded // weight:,} for this kind of file)."
            )
        image.seek(0)
        image.load()
    transpose = _orientation(image)
    upright = stored[::-1] if transpose in _SWAPS_SIDES else stored
    box = None
    if crop is not None:
        check_crop(upright, crop)
        box = _stored_box(crop, upright, transpose)
    scale = image.width / stored[0]  # what the JPEG draft kept
    try:
        small = _reduced_rgb(image, max(1, int(factor * scale)), box, scale)
    except Exception as exc:
        raise InvalidImage(f"The colour mode {image.mode} cannot be converted ({exc}).") from None
    return small.transpose(transpose) if transpose is not None else small


def _decode_cost(image: Image.Image, stored: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """How much decoding ``image`` costs: a weight, and the size decoded (after the draft)."""
    if image.format in {"JPEG", "MPO"} and image.info.get("progressive"):
        return _PROGRESSIVE_JPEG, stored
    return _BUFFERED_FORMATS.get(image.format or "", 1), image.size


#: Metadata blocks (JPEG segments, PNG chunks, GIF sub-blocks) a search photo may hold, plus
#: one per KB of file: Pillow reads each in Python, so a file of nothing else costs seconds.
_MAX_BLOCKS = 1024
#: Scans of a JPEG: each progressive scan walks every block of the image again.
_MAX_JPEG_SCANS = 100
_FILL = re.compile(rb"\xff+")


def check_blocks(data: bytes) -> None:
    """``InvalidImage`` when ``data`` (a JPEG, PNG or GIF) holds more metadata blocks or
    JPEG scans than any photo of its size, before Pillow parses them one by one."""
    allowed = _MAX_BLOCKS + len(data) // 1024
    if data[:2] == b"\xff\xd8":
        count = _jpeg_segments(data, allowed)
        if data.count(b"\xff\xda") > _MAX_JPEG_SCANS:
            raise InvalidImage(f"The JPEG has more than {_MAX_JPEG_SCANS} scans.")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        count = _png_chunks(data, allowed)
    elif data[:4] == b"GIF8":
        count = _gif_blocks(data, allowed)
    else:
        return
    if count > allowed:
        raise InvalidImage(f"The file holds more than {allowed:,} metadata blocks.")


def _jpeg_segments(data: bytes, limit: int) -> int:
    """Segments (and fill bytes) before the first scan, counted up to ``limit`` + 1."""
    pos, count = 2, 0
    while count <= limit and pos < len(data) and data[pos] == 0xFF:
        run = _FILL.match(data, pos).end()
        count += run - pos
        if run >= len(data) or data[run] == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos = (
            run + 1
            if 0xD0 <= data[run] <= 0xD9
            else run + 1 + int.from_bytes(data[run + 1 : run + 3])
        )
    return count


def _png_chunks(data: bytes, limit: int) -> int:
    """Chunks up to IEND, counted up to ``limit`` + 1."""
    pos, count = 8, 0
    while count <= limit and pos + 8 <= len(data):
        count += 1
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4])
    return count


def _gif_blocks(data: bytes, limit: int) -> int:
    """Extension sub-blocks before the first image, counted up to ``limit`` + 1."""
    if len(data) < 13:
        return 0
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the palette
    count = 0
    while count <= limit and pos + 1 < len(data) and data[pos] == 0x21:
        pos += 2
        while count <= limit and pos < len(data):
            count, size = count + 1, data[pos]
            pos += 1 + size
            if size == 0:
                break
    return count


def _needed_reduction(size: tuple[int, int], crop: tuple[int, int, int, int] | None) -> float:
    """How many times smaller than ``size`` the image may be decoded: the longest side of
    what is searched (the crop box, else the image) needs ``MAX_QUERY_SIDE`` pixels."""
    longest = max(size)
    if crop is not None:
        longest = min(longest, max(1, int(crop[2]), int(crop[3])))
    return longest / MAX_QUERY_SIDE


_SWAPS_SIDES = {Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE}
_SWAPS_SIDES |= {Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270}
#: EXIF orientation: the transposition that makes the stored image upright (as exif_transpose).
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> Image.Transpose | None:
    try:
        return _ORIENTATIONS.get(image.getexif().get(0x0112))
    except Exception:  # a broken EXIF block must not reject an otherwise good photo
        return None


def _stored_box(
    crop: tuple[int, int, int, int], upright: tuple[int, int], transpose: Image.Transpose | None
) -> tuple[int, int, int, int]:
    """The ``crop`` box ``(x, y, width, height)`` of the upright image as the box
    ``(left, top, right, bottom)`` of the stored one, before its EXIF transposition."""
    x, y, w, h = (int(value) for value in crop)
    width, height = upright
    left, top, right, bottom = x, y, x + w, y + h
    if transpose in {Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180}:
        left, right = width - right, width - left
    if transpose in {Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180}:
        top, bottom = height - bottom, height - top
    if transpose == Image.Transpose.TRANSPOSE:
        left, top, right, bottom = top, left, bottom, right
    elif transpose == Image.Transpose.TRANSVERSE:
        left, top, right, bottom = height - bottom, width - right, height - top, width - left
    elif transpose == Image.Transpose.ROTATE_270:  # undone by a quarter turn the other way
        left, top, right, bottom = top, width - right, bottom, width - left
    elif transpose == Image.Transpose.ROTATE_90:
        left, top, right, bottom = height - bottom, left, height - top, right
    return left, top, right, bottom


def _reduced_rgb(
    image: Image.Image, factor: int, box: tuple[int, int, int, int] | None, scale: float
) -> Image.Image:
    """The ``box`` of ``image`` (in stored pixels, ``scale`` times ``image``'s) in RGB and
    ``factor`` times smaller, converted a tile at a time: a 16-bit, palette or transparent
    image converts through wider modes, never as a second full-size copy."""
    if box is None:
        left, top, right, bottom = 0, 0, image.width, image.height
    else:
        left, top = int(box[0] * scale), int(box[1] * scale)
        right = max(left + 1, min(image.width, math.ceil(box[2] * scale)))
        bottom = max(top + 1, min(image.height, math.ceil(box[3] * scale)))
    size = (math.ceil((right - left) / factor), math.ceil((bottom - top) / factor))
    out = Image.new("RGB", size)
    step = factor * max(1, _TILE_SIDE // factor)  # whole blocks of factor x factor pixels
    for y in range(top, bottom, step):
        for x in range(left, right, step):
            tile = to_rgb(image.crop((x, y, min(x + step, right), min(y + step, bottom))))
            out.paste(
                tile.reduce(factor) if factor > 1 else tile,
                ((x - left) // factor, (y - top) // factor),
            )
    return out


def read_stored(fieldfile: Any) -> bytes:
    """The bytes of a stored image file (a ``FieldFile``), within ``MAX_IMAGE_BYTES``;
    ``InvalidImage`` for no file, a missing file or a larger one."""
    from visualsearch.conf import visualsearch_settings

    if not fieldfile:
        raise InvalidImage("The row has no image file.")
    try:
        with fieldfile.storage.open(fieldfile.name, "rb") as handle:
            return read_limited(handle, int(visualsearch_settings.MAX_IMAGE_BYTES))
    except FileNotFoundError:
        raise InvalidImage("The image file is missing from storage.") from None


def decode_stored(data: bytes) -> Image.Image:
    """A stored image's bytes decoded within ``MAX_IMAGE_PIXELS`` and bounded for the encoder
    like query photos (a 20000x1 banner must not blow up the encoder's resize)."""
    from visualsearch.conf import visualsearch_settings

    image = decode_image(data, max_pixels=int(visualsearch_settings.MAX_IMAGE_PIXELS))
    return fit_for_encoder(image)


def fit_for_encoder(image: Image.Image) -> Image.Image:
    """``image`` shrunk to ``MAX_QUERY_SIDE`` and padded with white to ``MAX_QUERY_ASPECT``."""
    image.thumbnail((MAX_QUERY_SIDE, MAX_QUERY_SIDE))
    width, height = image.size
    short = max(width, height) // MAX_QUERY_ASPECT
    if min(width, height) >= short:
        return image
    canvas = Image.new("RGB", (max(width, short), max(height, short)), "white")
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def preview_data_url(image: Image.Image, side: int = 240) -> str:
    """A small JPEG of ``image`` as a ``data:`` URL, to show a searched photo without storing it."""
    preview = image.copy()
    preview.thumbnail((side, side))
    out = io.BytesIO()
    preview.save(out, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto a white background."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey, any byte order
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "La":  # premultiplied alpha
        image = image.convert("LA")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "La", "RGBa"}:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
