"""Stored base features of an adapted encoder: encode once, project as often as retrained.

An adapted encoder (:class:`~visualsearch.encoders.adapted.AdaptedEncoder`) is a base
encoder followed by a projection. Whenever the pipeline encodes images with one, it keeps the
base features in :class:`~visualsearch.models.EncodedVector` under the base model's id, keyed
by content hash; a retrained projection is then applied to them (one matrix product per batch)
instead of decoding and encoding every photo again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from visualsearch.models import EncodedVector

__all__ = ["attach", "derive", "encode", "lookup", "store"]


def base_of(encoder: Any) -> Any:
    """The base encoder of an adapted ``encoder``, else None."""
    base = getattr(encoder, "base", None)
    return base if base is not None and hasattr(encoder, "project") else None


def lookup(model_id: str, digests: Iterable[str]) -> dict[str, np.ndarray]:
    """``{digest: vector}`` stored under ``model_id`` for these contents."""
    rows = EncodedVector.objects.filter(model_id=model_id, digest__in=set(digests))
    return {
        digest: np.asarray(vector, dtype=np.float32)
        for digest, vector in rows.values_list("digest", "vector")
    }


def store(model_id: str, digests: list[str], vectors: Any) -> None:
    """Keep ``vectors`` (one per digest) under ``model_id``; contents already kept stay."""
    EncodedVector.objects.bulk_create(
        [
            EncodedVector(model_id=model_id, digest=digest, vector=np.asarray(vector, np.float32))
            for digest, vector in zip(digests, vectors, strict=True)
        ],
        ignore_conflicts=True,
    )


def attach(encoder: Any, items: list) -> None:
    """Set ``item.features`` from the stored base features, for an adapted ``encoder``."""
    base = base_of(encoder)
    if base is None or not items:
        return
    found = lookup(base.model_id, (item.digest for item in items))
    for item in items:
        item.features = found.get(item.digest)


def derive(encoder: Any, item: Any) -> np.ndarray | None:
    """The adapted vector of ``item`` from its stored base features (None: none stored)."""
    if item.features is None or base_of(encoder) is None:
        return None
    return encoder.project(item.features[None, :])[0]


def encode(encoder: Any, items: list) -> np.ndarray:
    """Encode the items' payloads; an adapted encoder's base features are kept on the way."""
    base = base_of(encoder)
    payloads = [item.payload for item in items]
    if base is None:
        return encoder.encode_images(payloads)
    vectors = base.encode_images(payloads)
    store(base.model_id, [item.digest for item in items], vectors)
    return encoder.project(vectors)
