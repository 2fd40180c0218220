"""Encoders for tests: real encoders with one capability taken away (no mocks)."""

from visualsearch.encoders.base import BaseEncoder
from visualsearch.encoders.clip import CLIPEncoder


class ImageOnlyCLIPEncoder(CLIPEncoder):
    """The tiny CLIP without its text tower: behaves like an image-only encoder."""

    supports_text = False
    encode_texts = BaseEncoder.encode_texts


def image_only_settings(settings_visualsearch: dict) -> dict:
    """``VISUALSEARCH`` with the image-only encoder swapped in (same vectors, same model id)."""
    return {**settings_visualsearch, "ENCODER": "tests.encoders.ImageOnlyCLIPEncoder"}


class UnnormalisedCLIPEncoder(CLIPEncoder):
    """The tiny CLIP returning rows of length 3: an encoder that breaks the unit contract."""

    def encode_images(self, images):
        return 3.0 * super().encode_images(images)


class WideEncoder(BaseEncoder):
    """Only a size: 768-d vectors (CLIP ViT-L/14's), too long for a B-tree entry."""

    dimensions = 768
    model_id = "tests:wide-768"


class ColourEncoder(BaseEncoder):
    """A small deterministic encoder without weights: a seeded random projection of the
    image's 4×4 colours to 32 dimensions (the tiny CLIP's size). ``seed`` makes other
    "models"; ``delay`` makes it slow; images ``poison`` pixels wide get NaN vectors
    (``poison_mode="nan"``) or raise ``RuntimeError`` (``"raise"``)."""

    dimensions = 32

    def __init__(self, seed: int = 0, delay: float = 0.0, poison: int = 0, poison_mode="nan"):
        import numpy as np

        self.seed, self.delay, self.poison, self.poison_mode = seed, delay, poison, poison_mode
        self.matrix = np.random.default_rng(seed).standard_normal((48, 32)).astype(np.float32)
        self.calls = 0

    @property
    def model_id(self) -> str:
        return f"tests:colour:{self.seed}"

    def encode_images(self, images):
        import time

        import numpy as np

        from visualsearch.encoders.base import l2_normalize

        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        rows = []
        for image in images:
            if self.poison and image.width == self.poison and self.poison_mode == "raise":
                raise RuntimeError(f"cannot encode a {image.width}-pixel-wide image")
            pixels = np.asarray(image.convert("RGB").resize((4, 4)), dtype=np.float32) / 255
            row = pixels.reshape(-1) @ self.matrix
            if self.poison and image.width == self.poison:
                row[:] = np.nan
            rows.append(row)
        return l2_normalize(np.stack(rows)) if rows else np.zeros((0, 32), np.float32)


class SwappingEncoder(ColourEncoder):
    """A base encoder for ``AdaptedEncoder`` that replaces the projection file while it
    encodes (``replacement`` moved over ``watched``): a retrain landing mid-batch."""

    def __init__(self, watched: str = "", replacement: str = "", **options):
        super().__init__(**options)
        self.watched, self.replacement = watched, replacement

    def encode_images(self, images):
        import os
        import shutil

        rows = super().encode_images(images)
        if self.replacement and os.path.exists(self.replacement):
            shutil.copyfile(self.replacement, self.watched + ".tmp")
            os.replace(self.watched + ".tmp", self.watched)
        return rows
