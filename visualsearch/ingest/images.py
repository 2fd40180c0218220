"""Safe image decoding: bytes in, an RGB ``PIL.Image`` out, or ``InvalidImage`` with a reason."""

from __future__ import annotations

import base64
import io
import warnings
from collections.abc import Sequence
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
    if not data:
        raise InvalidImage("The file is empty.")
    Image.init()  # registers every plugin, so that the names below can be checked
    readable = [name for name in formats if name in Image.OPEN]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=readable)
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidImage("The image has no pixels.")
            if width * height > max_pixels:
                raise InvalidImage(
                    f"The image is {width}x{height} pixels, more than the {max_pixels:,} allowed."
                )
            image.seek(0)
            image.load()
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
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not reject an otherwise good photo
        pass
    try:
        return to_rgb(image)
    except Exception as exc:
        raise InvalidImage(f"The colour mode {image.mode} cannot be converted ({exc}).") from None


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
    x, y, width, height = (int(value) for value in box)
    if width < MIN_CROP_SIDE or height < MIN_CROP_SIDE:
        raise InvalidCrop(
            f"The crop box is {width}x{height} pixels; each side must be at least {MIN_CROP_SIDE}."
        )
    if x < 0 or y < 0 or x + width > image.width or y + height > image.height:
        raise InvalidCrop(
            f"The crop box (x={x}, y={y}, width={width}, height={height}) reaches outside the "
            f"{image.width}x{image.height} image."
        )
    return image.crop((x, y, x + width, y + height))


def open_query_image(
    upload: bytes | BinaryIO,
    *,
    crop: tuple[int, int, int, int] | None = None,
    max_bytes: int | None = None,
    max_pixels: int | None = None,
) -> Image.Image:
    """A search upload (bytes or a file) as an RGB image, cropped to ``crop`` if given: the
    one place uploads are opened, within ``MAX_IMAGE_BYTES`` and ``MAX_IMAGE_PIXELS`` (or
    the limits given)."""
    from visualsearch.conf import visualsearch_settings

    max_bytes = int(visualsearch_settings.MAX_IMAGE_BYTES if max_bytes is None else max_bytes)
    max_pixels = int(visualsearch_settings.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels)
    data = upload if isinstance(upload, bytes) else read_limited(upload, max_bytes)
    if len(data) > max_bytes:
        raise InvalidImage(f"The file is larger than the {_size(max_bytes)} limit.")
    return fit_for_encoder(crop_image(decode_image(data, max_pixels=max_pixels), crop))


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
