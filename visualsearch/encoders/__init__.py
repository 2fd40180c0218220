"""Image (and text) encoders. ``get_encoder()`` returns the configured one, once per process.

Encoder modules import their heavy libraries (torch, sentence-transformers, ONNX Runtime)
only when a model is first used, so importing this package is cheap.
"""

from __future__ import annotations

from functools import lru_cache

from django.core.exceptions import ImproperlyConfigured

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.base import BaseEncoder, BaseTextEncoder, TextEncodingNotSupported

__all__ = [
    "BaseEncoder",
    "BaseTextEncoder",
    "TextEncodingNotSupported",
    "get_encoder",
    "get_text_encoder",
]


@lru_cache(maxsize=1)
def get_encoder() -> BaseEncoder:
    """Return the encoder named by ``VISUALSEARCH["ENCODER"]``, built with ``ENCODER_OPTIONS``.

    Building it does not load model weights; the first ``encode_*`` call does.
    """
    encoder_class = visualsearch_settings.ENCODER_CLASS
    if not (isinstance(encoder_class, type) and issubclass(encoder_class, BaseEncoder)):
        raise ImproperlyConfigured(
            f"VISUALSEARCH['ENCODER'] must name a subclass of "
            f"visualsearch.encoders.BaseEncoder, got {encoder_class!r}."
        )
    options = visualsearch_settings.ENCODER_OPTIONS
    if not isinstance(options, dict):
        raise ImproperlyConfigured("VISUALSEARCH['ENCODER_OPTIONS'] must be a dict.")
    try:
        return encoder_class(**options)
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"VISUALSEARCH['ENCODER_OPTIONS'] do not fit {encoder_class.__name__}: {exc}"
        ) from exc


@lru_cache(maxsize=1)
def get_text_encoder() -> BaseTextEncoder:
    """Return the text encoder named by ``VISUALSEARCH["TEXT_ENCODER"]``, once per process.

    Building it does not load model weights; the first ``encode_texts`` call does.
    """
    encoder_class = visualsearch_settings.TEXT_ENCODER_CLASS
    if not (isinstance(encoder_class, type) and issubclass(encoder_class, BaseTextEncoder)):
        raise ImproperlyConfigured(
            f"VISUALSEARCH['TEXT_ENCODER'] must name a subclass of "
            f"visualsearch.encoders.BaseTextEncoder, got {encoder_class!r}."
        )
    options = visualsearch_settings.TEXT_ENCODER_OPTIONS
    if not isinstance(options, dict):
        raise ImproperlyConfigured("VISUALSEARCH['TEXT_ENCODER_OPTIONS'] must be a dict.")
    try:
        return encoder_class(**options)
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"VISUALSEARCH['TEXT_ENCODER_OPTIONS'] do not fit {encoder_class.__name__}: {exc}"
        ) from exc
