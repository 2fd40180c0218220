"""The worst search photos we can make within the byte and pixel caps, and what opening one
costs: peak memory over the process's baseline and CPU seconds, measured in a child process.

Used by ``test_abuse.py`` (bounds with margins) and ``bench/hostile.py`` (the figures).
Run ``python -m tests.api.hostile_images FILE`` to measure one file: it prints one JSON line.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

BASE_DIR = Path(__file__).resolve().parents[2]
#: Square side just under the default MAX_IMAGE_PIXELS, which the header check allows.
SIDE = 6300


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(
    width: int,
    height: int,
    *,
    depth: int = 8,
    colour: int = 6,
    extra: bytes = b"",
    interlace: int = 0,
) -> bytes:
    """A PNG of zeros written row by row (a small file for any size): any depth and colour
    type (0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA), ``extra`` chunks before IDAT."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = b"\x00" * (1 + (width * channels * depth + 7) // 8)
    packer = zlib.compressobj(9)
    rows = height * (2 if interlace else 1)  # Adam7 passes hold about as many bytes again
    data = b"".join(packer.compress(row) for _ in range(rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + extra
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )


def palette_png(side: int) -> bytes:
    """A palette PNG with a transparent colour (decoded as P, composited through RGBA)."""
    palette = _chunk(b"PLTE", bytes(range(256)) * 3)
    return png(side, side, colour=3, extra=palette + _chunk(b"tRNS", b"\x00" * 256))


def jpeg(size: tuple[int, int], mode: str = "RGB", **options: object) -> bytes:
    """A JPEG of soft noise (a realistic entropy load) at ``size``."""
    rng = np.random.default_rng(0)
    channels = len(mode)
    small = rng.integers(0, 255, (size[1] // 16 + 1, size[0] // 16 + 1, channels), np.uint8)
    tile = Image.fromarray(small.squeeze() if channels == 1 else small, mode)
    image = tile.resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=options.pop("quality", 80), **options)
    return out.getvalue()


def gif_frames(side: int, frames: int) -> bytes:
    """An animated GIF: a ``side`` square first frame, then ``frames`` more."""
    images = [Image.new("P", (side, side), i % 256) for i in range(frames + 1)]
    out = io.BytesIO()
    images[0].save(out, "GIF", save_all=True, append_images=images[1:], duration=10)
    return out.getvalue()


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: object) -> bytes:
    """A flat image of ``size`` encoded by Pillow as ``fmt``."""
    out = io.BytesIO()
    Image.new(mode, size, 0).save(out, fmt, **options)
    return out.getvalue()


def bmp_rle8(side: int) -> bytes:
    """An RLE8 BMP of zeros: runs of 255 pixels, a small file for any size."""
    row = b"\xff\x00" * (side // 255) + bytes([side % 255, 0]) * bool(side % 255) + b"\x00\x00"
    pixels = row * side + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels


def bmp_rle8_noise(side: int, max_bytes: int = 20 * 2**20) -> bytes:
    """An RLE8 BMP of one-pixel runs (2 bytes a pixel): the most work per byte for Pillow's
    run-length decoder, within ``max_bytes``."""
    height = min(side, max_bytes // (2 * side + 2))
    row = b"\x01\x07" * side + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    palette = b"\x00\x00\x00\x00" * 256
    info = struct.pack("<IiiHHIIiiII", 40, side, height, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels


def png_chunk_flood(max_bytes: int = 20 * 2**20) -> bytes:
    """A small PNG behind as many empty ancillary chunks as ``max_bytes`` holds: each is
    parsed by Pillow's own (Python) chunk reader."""
    image = png(64, 64, colour=2)
    flood = _chunk(b"tEXt", b"") * ((max_bytes - len(image)) // 12)
    return image[:33] + flood + image[33:]


def jpeg_marker_flood(max_bytes: int = 20 * 2**20) -> bytes:
    """A small JPEG behind as many empty APP15 segments as ``max_bytes`` holds."""
    image = jpeg((64, 64))
    flood = b"\xff\xef\x00\x02" * ((max_bytes - len(image)) // 4)
    return image[:2] + flood + image[2:]


def jpeg_fill_flood(max_bytes: int = 20 * 2**20) -> bytes:
    """A small JPEG whose first marker is preceded by as many fill bytes as fit."""
    image = jpeg((64, 64))
    return image[:2] + b"\xff" * (max_bytes - len(image)) + image[2:]


def jpeg_scan_flood(side: int = 1024, max_bytes: int = 20 * 2**20) -> bytes:
    """A progressive JPEG whose last scan is repeated as often as fits: libjpeg walks every
    block of the image again for each scan."""
    image = jpeg((side, side), progressive=True)
    last = image.rindex(b"\xff\xda")
    scan = image[last:-2]
    return image[:-2] + scan * ((max_bytes - len(image)) // len(scan)) + b"\xff\xd9"


def gif_comment_flood(max_bytes: int = 20 * 2**20) -> bytes:
    """A small GIF behind a comment of one-byte sub-blocks as long as fits."""
    image = encoded((64, 64), "GIF", "P")
    flood = b"\x21\xfe" + b"\x01x" * ((max_bytes - len(image)) // 2 - 2) + b"\x00"
    pos = 13 + (3 << ((image[10] & 7) + 1) if image[10] & 0x80 else 0)
    return image[:pos] + flood + image[pos:]


def noise(size: tuple[int, int], fmt: str, mode: str = "RGB", **options: object) -> bytes:
    """Random pixels encoded as ``fmt``: the most work per pixel for the decoder."""
    channels = len(mode)
    pixels = np.random.default_rng(1).integers(0, 255, (size[1], size[0], channels), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, fmt, **options)
    return out.getvalue()


#: The side of a square at the default MAX_QUERY_PIXELS, and at a third of it
#: (WebP, AVIF) or half (progressive JPEG): the largest of those decoded in full.
QUERY_SIDE, BUFFERED_SIDE, PROGRESSIVE_SIDE = 3464, 2000, 2449

#: name: a function that makes the file. Each is within the default MAX_IMAGE_BYTES and, by
#: its header, MAX_IMAGE_PIXELS: what an anonymous search upload may be.
HOSTILE: dict[str, Callable[[], bytes]] = {
    "png-rgba-40mp": lambda: png(SIDE, SIDE, colour=6),
    "png-rgba": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=6),
    "png-rgba-16bit": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=6, depth=16),
    "png-rgb-interlaced": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=2, interlace=1),
    "png-grey": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=0),
    "png-grey-16bit": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=0, depth=16),
    "png-grey-alpha-16bit": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=4, depth=16),
    "png-1bit": lambda: png(QUERY_SIDE, QUERY_SIDE, colour=0, depth=1),
    "png-palette-transparent": lambda: palette_png(QUERY_SIDE),
    "png-sliver": lambda: png(48_000, 250, colour=6),
    "png-chunk-flood": png_chunk_flood,
    "png-noise": lambda: noise((2200, 2200), "PNG", "RGBA", compress_level=1),
    "jpeg-baseline-40mp": lambda: jpeg((7700, 5100)),
    "jpeg-progressive-40mp": lambda: jpeg((7700, 5100), progressive=True, subsampling=0),
    "jpeg-progressive": lambda: jpeg((PROGRESSIVE_SIDE,) * 2, progressive=True, subsampling=0),
    "jpeg-cmyk-progressive": lambda: jpeg((PROGRESSIVE_SIDE,) * 2, "CMYK", progressive=True),
    "jpeg-grey-40mp": lambda: jpeg((7700, 5100), "L"),
    "jpeg-sliver": lambda: jpeg((65000, 610)),
    "jpeg-marker-flood": jpeg_marker_flood,
    "jpeg-fill-flood": jpeg_fill_flood,
    "jpeg-scan-flood": jpeg_scan_flood,
    "jpeg-noise": lambda: noise((6000, 4000), "JPEG", quality=75),
    "jpeg-progressive-noise": lambda: noise((2449, 2449), "JPEG", quality=95, progressive=True),
    "gif-many-frames": lambda: gif_frames(2000, 300),
    "gif": lambda: encoded((QUERY_SIDE, QUERY_SIDE), "GIF", "P"),
    "gif-comment-flood": gif_comment_flood,
    "webp-lossless": lambda: encoded((BUFFERED_SIDE, BUFFERED_SIDE), "WEBP", lossless=True),
    "webp-40mp": lambda: encoded((16383, 2400), "WEBP", lossless=True),
    "avif": lambda: encoded((BUFFERED_SIDE, BUFFERED_SIDE), "AVIF", speed=10),
    "avif-noise": lambda: noise((BUFFERED_SIDE, BUFFERED_SIDE), "AVIF", speed=10, quality=90),
    "webp-noise": lambda: noise((BUFFERED_SIDE, BUFFERED_SIDE), "WEBP", quality=95),
    "tiff-deflate": lambda: encoded((QUERY_SIDE,) * 2, "TIFF", compression="tiff_adobe_deflate"),
    "tiff-grey-16bit": lambda: encoded((QUERY_SIDE,) * 2, "TIFF", "I;16", compression="tiff_lzw"),
    "bmp-rle8": lambda: bmp_rle8(QUERY_SIDE),
    "bmp-rle8-one-pixel-runs": lambda: bmp_rle8_noise(QUERY_SIDE),
}


def measure(path: Path, timeout: float = 120) -> dict:
    """``{"rss_mb", "cpu_s", "outcome"}`` of opening ``path`` as a search photo, in a fresh
    process: peak RSS over its baseline (imports done, the bytes read, the format's decoder
    warmed up on a tiny image) and CPU seconds of the call."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.api.hostile_images", str(path)],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"measuring {path} failed:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def _rss_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in KB."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _child(path: str) -> None:
    import time

    import django
    from django.conf import settings

    settings.configure(VISUALSEARCH={})
    django.setup()
    from visualsearch.ingest.images import InvalidImage, open_query_image

    data = Path(path).read_bytes()
    Image.init()
    with Image.open(io.BytesIO(data)) as probe:  # loads the format's decoder library
        warm = io.BytesIO()
        Image.new("RGB", (16, 16)).save(warm, probe.format)
    try:
        open_query_image(warm.getvalue())
    except InvalidImage:  # a format search photos may not use (TIFF, BMP)
        pass
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from the RSS now
    before = _rss_kb("VmRSS")
    start = time.process_time()
    try:
        image = open_query_image(data)
        outcome = f"accepted {image.width}x{image.height}"
    except InvalidImage as exc:
        outcome = f"refused: {exc}"
    cpu = time.process_time() - start
    peak = _rss_kb("VmHWM")
    print(json.dumps({"rss_mb": round((peak - before) / 1024, 1), "cpu_s": round(cpu, 3),
                      "outcome": outcome}))  # fmt: skip


if __name__ == "__main__":
    _child(sys.argv[1])
