"""Product-level similarity: similar products, search by image, search by text.

Each builds the query vector (the product's mean image vector, the photo's, the words')
and hands it to the one k-NN path, :mod:`visualsearch.query.knn`; text search fuses the
rankings of :mod:`visualsearch.query.hybrid`. Results are product instances annotated with
``distance`` (cosine distance of the best-matching image) and ``similarity``
(``1 - distance``), best first.
"""

from __future__ import annotations

from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.base import l2_normalize
from visualsearch.encoders.remote import query_encoder
from visualsearch.encoders.serving import refresh, retry_after_switch, switching
from visualsearch.ingest import fusion
from visualsearch.ingest.images import open_query_image
from visualsearch.query.fused import nearest as fused_nearest
from visualsearch.query.fused import photo_vector, product_vectors
from visualsearch.query.knn import nearest, nearest_products


def similar_products(product: Any, k: int = 8, *, queryset: Any = None, **filters: Any) -> list:
    """The ``k`` products most similar to ``product`` (itself excluded).

    The query vector is the normalised mean of the product's ready image vectors. Keyword
    ``filters`` apply to the product model (``category=…``, ``in_stock=True``,
    ``price__lte=…``); ``queryset`` is the product queryset results are loaded from (to add
    ``select_related``/``prefetch_related``). Returns ``[]`` while the product has no ready
    embedding.
    """
    pk = getattr(product, "pk", product)
    current = fusion.serves("similar")
    if current is not None:  # the product's fused vector, once it is ready
        vector = product_vectors([pk], current).get(pk)
        if vector is not None:
            return fused_nearest(vector, k, current, exclude=[pk], queryset=queryset, **filters)
    return retry_after_switch(
        lambda: nearest(k, {"mean_of": pk, "exclude": pk}, queryset=queryset, **filters)
    )


def search_by_image(
    image: Image.Image | bytes | BinaryIO, k: int = 8, *, queryset: Any = None, **filters: Any
) -> list:
    """Products whose images look most like ``image`` (a PIL image, bytes or a binary file).

    Undecodable data raises ``visualsearch.ingest.images.InvalidImage`` with a reason for the user.
    """
    return search(image=image, k=k, queryset=queryset, **filters)


def search_by_text(text: str, k: int = 8, *, queryset: Any = None, **filters: Any) -> list:
    """Products matching the description ``text``: hybrid text search when ``TEXT_MODEL`` is
    set (fused with CLIP's reading where the image encoder has a text tower), else CLIP's
    text tower alone.

    Raises ``TextEncodingNotSupported`` when neither is configured, and ``ValueError`` for
    an empty query.
    """
    if not (text or "").strip():
        raise ValueError("The search text is empty.")
    return search(text=text, k=k, queryset=queryset, **filters)


def search(
    image: Image.Image | bytes | BinaryIO | None = None,
    text: str | None = None,
    k: int = 8,
    *,
    queryset: Any = None,
    **filters: Any,
) -> list:
    """Products matching a photo, a description, or both.

    Without text search (``TEXT_MODEL`` unset) the description is read by the image encoder's
    text tower (CLIP) and its vector averaged with the photo's. With text search on, the
    description is ranked by hybrid text search (``visualsearch.query.hybrid``), and the image
    ranking (the photo's, and CLIP's reading of the words where it has a text tower, else the
    learned text bridge's where ``TEXT_BRIDGE`` is set) is fused with it by reciprocal rank
    fusion; results then carry ``score`` too.

    Needs at least one of the two; ``TextEncodingNotSupported`` when ``text`` is given but
    neither text search nor a text tower is configured.
    """
    text = (text or "").strip()
    if image is None and not text:
        raise ValueError("Give a photo or a description to search with.")
    if image is not None and not isinstance(image, Image.Image):
        image = open_query_image(image)
    return retry_after_switch(lambda: _search(image, text, k, queryset, filters))


def _search(image: Image.Image | None, text: str, k: int, queryset: Any, filters: dict) -> list:
    """:func:`search` with the photo decoded, encoded by the serving generation's encoder
    (read afresh during a switch: the photo must be in the space of the vectors served)."""
    if switching():
        refresh()
    encoder = query_encoder()  # the serving encoder, or the remote endpoint (QUERY_ENCODER)
    hybrid = bool(text) and bool(visualsearch_settings.TEXT_MODEL)
    vectors = []
    text_vector = None
    if text and (encoder.supports_text or not hybrid):
        if not encoder.supports_text:
            encoder.encode_texts([text])  # raises TextEncodingNotSupported with the reason
        vectors.append(encoder.encode_texts([text])[0])
    elif hybrid and visualsearch_settings.TEXT_BRIDGE is not None:
        # No text tower: the learned bridge reads the words into the image space instead.
        from visualsearch.encoders import get_text_encoder
        from visualsearch.encoders.bridge import get_bridge

        bridge = get_bridge()
        text_vector = get_text_encoder().encode_texts([text])[0]
        vectors.append(bridge.apply(text_vector[None, :])[0])
    if image is not None:
        vectors.append(encoder.encode_images([image])[0])
        current = None if text else fusion.serves("photo")
        if current is not None:  # the photo against the fused vectors
            query = photo_vector(vectors[-1], current, **filters)
            found = fused_nearest(query, k, current, queryset=queryset, **filters)
            if found:
                return found
    query = l2_normalize(np.sum(np.stack(vectors), axis=0, keepdims=True))[0] if vectors else None
    if hybrid:
        from visualsearch.query.hybrid import hybrid_search

        return hybrid_search(
            text, k, vector=query, text_vector=text_vector, queryset=queryset, **filters
        )
    return nearest_products(query, k, queryset=queryset, **filters)
