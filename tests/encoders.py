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
