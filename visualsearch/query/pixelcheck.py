"""The pixel check of near-duplicate candidates: the same picture, once aligned, or not.

Image vectors find photos that look alike, but two colour variants shot on the same model,
or the same shoe photographed twice, are as close in vector space as a photo and its
re-encoded copy (``bench/duplicates.py`` measured it). So a candidate pair is compared
pixel by pixel: each photo is reduced to a small white-padded square (its *canvas*), the
crop window of one that best matches the other, mirrored or not, is searched (a coarse grid
of windows at 16 pixels, then a pattern search at 32), and the pair's *difference* is the
largest mean colour difference over the 4x4-pixel blocks of the aligned 32-pixel views (0:
identical, 1: black on white). A re-encode, a resize, a crop of up to about 10 % of the side
or a mirror image stays small everywhere; a colour variant or another shot differs strongly
somewhere. A crop that changes the aspect ratio a lot, a rotation or a recoloured copy are
not recognised.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from visualsearch.ingest.images import InvalidImage, decode_stored, read_stored, to_rgb

__all__ = ["Prepared", "canvas", "difference", "differences", "image_canvas", "prepare"]

CANVAS = 128  # side of the square kept per image
COARSE, FINE, BLOCK = 16, 32, 4  # sides compared in the search and the check; block side
SMALL = 48  # side of the copy that the coarse views are averaged from
#: Crop windows of the coarse search: (side as a share of the canvas, offset steps per axis).
WINDOWS = ((1.0, 1), (0.97, 3), (0.94, 5), (0.91, 7))
#: The pattern search that refines the best coarse window: first and last step, smallest side.
FIRST_STEP, FINEST_STEP, MIN_SIDE = 0.008, 0.002, 0.85
#: Blur radii (pixels) of the coarse and the fine views.
BLUR = (0.7, 1.0)


def canvas(image: Image.Image) -> Image.Image:
    """``image`` in RGB on a white square (centred), ``CANVAS`` pixels wide."""
    image = to_rgb(image)
    side = max(image.size)
    if image.width != image.height:
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        image = square
    return image.resize((CANVAS, CANVAS), Image.Resampling.BILINEAR, reducing_gap=3.0)


def image_canvas(fieldfile) -> Image.Image | None:
    """The canvas of a stored image file (a ``FieldFile``), read and decoded within the
    ``MAX_IMAGE_BYTES`` and ``MAX_IMAGE_PIXELS`` limits; ``None`` when it cannot be."""
    try:
        return canvas(decode_stored(read_stored(fieldfile)))
    except (InvalidImage, OSError):
        return None


def _view(image: Image.Image, size: int, window: tuple[float, float, float], blur: float = 0):
    """The crop ``window`` (side, x, y as shares of the side) of ``image`` at ``size``
    pixels, blurred by ``blur`` pixels after the crop, so that the comparison forgives a
    little misalignment and treats both photos' edges alike."""
    side, x, y = window
    width = image.width
    box = (x * width, y * width, (x + side) * width, (y + side) * width)
    view = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    return np.asarray(view.filter(ImageFilter.GaussianBlur(blur)) if blur else view)


FULL = (1.0, 0.0, 0.0)


@dataclass(frozen=True)
class Prepared:
    """One canvas ready for comparisons: its coarse crop windows and views, its full views."""

    canvas: Image.Image
    windows: list[tuple[float, float, float]]  # (side, x, y), shares of the canvas
    views: np.ndarray  # (windows, COARSE * COARSE * 3) bytes: the coarse views of the windows
    coarse: np.ndarray  # (2, COARSE * COARSE * 3) int16: the whole canvas, as is and mirrored
    fine: np.ndarray  # (2, FINE, FINE, 3) floats 0..1: the same at the fine size


def prepare(image: Image.Image) -> Prepared:
    """A canvas with what :func:`difference` compares, computed once per image."""
    windows, rows, columns = _coarse_windows()
    # The coarse views: area averages of a small blurred copy, as matrix products (fast).
    small = image.resize((SMALL, SMALL), Image.Resampling.BILINEAR)
    pixels = np.asarray(small.filter(ImageFilter.GaussianBlur(BLUR[0])), np.float32)
    tall = np.matmul(rows, pixels.reshape(SMALL, SMALL * 3)).reshape(-1, COARSE, SMALL, 3)
    views = np.matmul(tall.transpose(0, 1, 3, 2), columns.transpose(0, 2, 1)[:, None])
    views = views.transpose(0, 1, 3, 2)  # (window, row, column, channel)
    base = views[0]
    coarse = np.stack([base, base[:, ::-1]]).reshape(2, -1)  # the mirror image: flipped
    # Bytes: a quarter of the memory of floats, for the views kept per image.
    views = np.rint(views).astype(np.uint8).reshape(len(windows), -1)
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    fine = np.stack([_view(image, FINE, FULL, BLUR[1]), _view(mirror, FINE, FULL, BLUR[1])])
    coarse = np.rint(coarse).astype(np.int16)
    return Prepared(image, windows, views, coarse, fine.astype(np.float32) / 255)


@lru_cache(maxsize=1)
def _coarse_windows() -> tuple[list[tuple[float, float, float]], np.ndarray, np.ndarray]:
    """The crop windows of the coarse search, (side, x, y), and the matrices that average
    ``SMALL`` pixels into ``COARSE`` ones over each window's rows and columns."""
    windows = [
        (side, float(x), float(y))
        for side, steps in WINDOWS
        for x in np.linspace(0.0, 1.0 - side, steps)
        for y in np.linspace(0.0, 1.0 - side, steps)
    ]
    rows = np.stack([_area_matrix(y, side) for side, _x, y in windows])
    columns = np.stack([_area_matrix(x, side) for side, x, _y in windows])
    return windows, rows, columns


def _area_matrix(start: float, length: float) -> np.ndarray:
    """``(COARSE, SMALL)``: each output pixel the mean of the input pixels it covers, for
    the span ``start``..``start + length`` (shares of the side)."""
    edges = (start + length * np.arange(COARSE + 1) / COARSE) * SMALL
    low, high, index = edges[:-1, None], edges[1:, None], np.arange(SMALL)[None, :]
    overlap = np.clip(np.minimum(high, index + 1) - np.maximum(low, index), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _coarse(src: Prepared, dst: Prepared) -> tuple[float, int, int]:
    """The best (mean difference, window of ``src``, mirrored ``dst``?) at the coarse size."""
    # Integer sums: twice as fast as a mean in floats.
    sums = np.abs(src.views[:, None, :] - dst.coarse[None, :, :]).sum(axis=2, dtype=np.int32)
    errors = sums / (255.0 * src.views.shape[1])
    window, mirror = np.unravel_index(int(np.argmin(errors)), errors.shape)
    return float(errors[window, mirror]), int(window), int(mirror)


def _refine(src: Prepared, target: np.ndarray, window: tuple[float, float, float]) -> np.ndarray:
    """The view of ``src`` nearest ``target``, by a pattern search around ``window``: a step
    along each of side, centre x and centre y while it helps, then half steps, down to
    ``FINEST_STEP`` (steps of the side keep the centre, so a scale is found on its own)."""

    def error(centred: tuple[float, float, float]) -> tuple[float, np.ndarray]:
        side, cx, cy = centred
        view = _view(src.canvas, FINE, (side, cx - side / 2, cy - side / 2), BLUR[1])
        view = view.astype(np.float32) / 255
        return float(np.abs(view - target).mean()), view

    side, x, y = window
    centred = (side, x + side / 2, y + side / 2)
    best_error, best = error(centred)
    step = FIRST_STEP
    while step >= FINEST_STEP:
        moved = False
        for axis in range(3):
            for sign in (-1.0, 1.0):
                trial = list(centred)
                trial[axis] += sign * step
                side = min(max(trial[0], MIN_SIDE), 1.0)
                half = side / 2
                trial = (
                    side,
                    min(max(trial[1], half), 1 - half),
                    min(max(trial[2], half), 1 - half),
                )
                if trial == centred:
                    continue
                trial_error, view = error(trial)
                if trial_error < best_error:
                    best_error, best, centred, moved = trial_error, view, trial, True
        if not moved:
            step /= 2
    return best


def _block_max(view: np.ndarray, target: np.ndarray) -> float:
    """The largest mean colour difference over the ``BLOCK``-pixel blocks of two views."""
    per_pixel = np.abs(view - target).mean(axis=2)
    blocks = FINE // BLOCK
    return float(per_pixel.reshape(blocks, BLOCK, blocks, BLOCK).mean(axis=(1, 3)).max())


def difference(a: Prepared, b: Prepared, limit: float | None = None) -> float:
    """How different two prepared canvases are once aligned, 0..1 (see the module text).

    Both ways are tried (``a`` a crop of ``b``, or ``b`` of ``a``), each mirrored or not.
    With a ``limit``, a pair whose coarse mean difference is already above it is not
    refined: its coarse difference comes back (the difference is never below the mean).
    """
    forward, backward = _coarse(a, b), _coarse(b, a)
    (error, window, mirror), src, dst = min((forward, a, b), (backward, b, a), key=lambda t: t[0])
    if limit is not None and error > limit:
        return error
    target = dst.fine[mirror]
    return max(_block_max(_refine(src, target, src.windows[window]), target), error)


class _Prepared(OrderedDict):
    """The prepared canvases of the most recently used images (least recently used dropped)."""

    def __init__(self, load: Callable[[Hashable], Image.Image | None], size: int) -> None:
        super().__init__()
        self.load, self.size = load, size

    def get_prepared(self, key: Hashable) -> Prepared | None:
        if key in self:
            self.move_to_end(key)
            return self[key]
        image = self.load(key)
        value = self[key] = prepare(image) if image is not None else None
        if len(self) > self.size:
            self.popitem(last=False)
        return value


def differences(
    pairs: Iterable[tuple[Hashable, Hashable]],
    load: Callable[[Hashable], Image.Image | None],
    *,
    limit: float | None = None,
    cache_size: int = 2_000,
    progress: Callable[[int], None] | None = None,
) -> list[float | None]:
    """:func:`difference` of each pair of image keys (with ``limit``), in order; ``None``
    where an image could not be loaded. ``load(key)`` returns a canvas (or ``None``); the
    prepared canvases of the ``cache_size`` most recent images are kept (about 110 KB
    each). ``progress(n)`` is called with the number of pairs done since its last call."""
    pairs = list(pairs)
    prepared = _Prepared(load, cache_size)
    results: list[float | None] = [None] * len(pairs)
    for done, index in enumerate(_walk(pairs), 1):
        first, second = (prepared.get_prepared(key) for key in pairs[index])
        if first is not None and second is not None:
            results[index] = difference(first, second, limit)
        if progress is not None and (done % 100 == 0 or done == len(pairs)):
            progress(done % 100 or 100)
    return results


def _walk(pairs: list[tuple[Hashable, Hashable]]) -> list[int]:
    """The pairs' indexes in the order of a breadth-first walk of the graph they make, so
    that an image's pairs, and its neighbours', come close together (few images are then
    prepared twice, whatever the cache's size)."""
    edges: dict[Hashable, list[tuple[int, Hashable]]] = {}
    for index, (a, b) in enumerate(pairs):
        edges.setdefault(a, []).append((index, b))
        edges.setdefault(b, []).append((index, a))
    order, seen, visited = [], set(), set()
    for start in edges:
        if start in visited:
            continue
        visited.add(start)
        queue = deque([start])
        while queue:
            for index, other in edges[queue.popleft()]:
                if index not in seen:
                    seen.add(index)
                    order.append(index)
                if other not in visited:
                    visited.add(other)
                    queue.append(other)
    return order
