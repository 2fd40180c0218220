"""Image (and text) encoders. ``get_encoder()`` returns the configured one, once per process.

Encoder modules import their heavy libraries (torch, sentence-transformers, ONNX Runtime)
only when a model is first used, so importing this package is cheap.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

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
    return _build("ENCODER", BaseEncoder)


@lru_cache(maxsize=1)
def get_text_encoder() -> BaseTextEncoder:
    """Return the text encoder named by ``VISUALSEARCH["TEXT_ENCODER"]``, once per process.

    Building it does not load model weights; the first ``encode_texts`` call does.
    """
    return _build("TEXT_ENCODER", BaseTextEncoder)


def _build(key: str, base: type) -> Any:
    """An instance of the class the setting ``key`` names (a ``base``), with ``key_OPTIONS``."""
    encoder_class = getattr(visualsearch_settings, f"{key}_CLASS")
    if not (isinstance(encoder_class, type) and issubclass(encoder_class, base)):
        raise ImproperlyConfigured(
            f"VISUALSEARCH['{key}'] must name a subclass of "
            f"visualsearch.encoders.{base.__name__}, got {encoder_class!r}."
        )
    options = getattr(visualsearch_settings, f"{key}_OPTIONS")
    if not isinstance(options, dict):
        raise ImproperlyConfigured(f"VISUALSEARCH['{key}_OPTIONS'] must be a dict.")
    try:
        return encoder_class(**options)
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"VISUALSEARCH['{key}_OPTIONS'] do not fit {encoder_class.__name__}: {exc}"
        ) from exc


def _rebuild(*, setting: str, **kwargs: Any) -> None:
    """Build the encoders anew when ``settings.VISUALSEARCH`` changes (``override_settings``)."""
    if setting == "VISUALSEARCH":
        get_encoder.cache_clear()
        get_text_encoder.cache_clear()


setting_changed.connect(_rebuild, dispatch_uid="visualsearch.encoders.rebuild")
