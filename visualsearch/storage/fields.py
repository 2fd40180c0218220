"""pgvector columns sized by the configured encoders, their size kept out of migrations."""

from __future__ import annotations

from typing import Any

from pgvector.django import VectorField


def configured_dimensions() -> int:
    """Vector length of the configured encoder, known without loading its weights."""
    from visualsearch.encoders import get_encoder

    return get_encoder().dimensions


class EmbeddingField(VectorField):
    """A pgvector ``vector`` column sized by the configured encoder.

    The size is not written into migrations: a project that switches to an encoder of another
    size gets system check ``visualsearch.E004`` and resizes the column with
    ``manage.py visualsearch_reindex --resize``.
    """

    def __init__(self, *args: Any, dimensions: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("null", True)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("editable", False)
        super().__init__(*args, dimensions=dimensions or configured_dimensions(), **kwargs)

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, _path, args, kwargs = super().deconstruct()
        kwargs.pop("dimensions", None)
        return name, "visualsearch.models.EmbeddingField", args, kwargs


def configured_text_dimensions() -> int:
    """Vector length of the configured text encoder, known without loading its weights."""
    from visualsearch.encoders import get_text_encoder

    return get_text_encoder().dimensions


class TextEmbeddingField(EmbeddingField):
    """A ``vector`` column sized by the text encoder (``VISUALSEARCH["TEXT_ENCODER"]``)."""

    def __init__(self, *args: Any, dimensions: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, dimensions=dimensions or configured_text_dimensions(), **kwargs)

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, _path, args, kwargs = super().deconstruct()
        return name, "visualsearch.models.TextEmbeddingField", args, kwargs
