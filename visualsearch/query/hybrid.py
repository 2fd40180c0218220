"""Hybrid text search: Postgres full-text search and text vectors, fused by rank.

Two rankings of the product-text rows (``VISUALSEARCH["TEXT_MODEL"]``) answer a description:

* full-text: ``search_vector @@ query`` over the GIN index, products matching every word
  first, then those matching some, each group by ``ts_rank`` (the first ``TEXT_FIELDS``
  field weighs most);
* semantic: the text encoder's vector of the description, nearest product-text vectors by
  cosine distance over the HNSW index.

They are fused by reciprocal rank fusion (``score = sum 1 / (RRF_K + rank)``), which needs no
score calibration between the two. A photo (or CLIP's reading of the words, or the learned
text bridge's, ``visualsearch.bridge``) adds the image ranking, fused with the text ranking the
same way, each half weighing the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import reduce
from operator import or_
from typing import Any

import numpy as np
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db.models import Case, F, IntegerField, Q, Value, When
from pgvector.django import CosineDistance

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import get_text_encoder
from visualsearch.storage.lookup import get_product_model, get_text_model

#: Words of a description that full-text search reads (letters and digits), at most MAX_WORDS.
WORD = re.compile(r"\w+")
MAX_WORDS = 32


def reciprocal_rank_fusion(
    rankings: Iterable[Sequence[Any]], k: int | None = None
) -> list[tuple[Any, float]]:
    """``[(key, score), …]`` best first, ``score = sum over rankings of 1 / (k + rank)``.

    Ranks start at 1; a key missing from a ranking gets nothing from it. Ties keep the order
    in which keys were first seen. ``k`` defaults to ``RRF_K`` (60).
    """
    k = int(visualsearch_settings.RRF_K if k is None else k)
    scores: dict[Any, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def _text_rows(rows: Any, filters: dict[str, Any]) -> Any:
    """``rows`` of the text model narrowed by product ``filters`` (``category=…``)."""
    product_field = visualsearch_settings.PRODUCT_FIELD
    if filters:
        rows = rows.filter(**{f"{product_field}__{key}": value for key, value in filters.items()})
    return rows


def _attname() -> str:
    return get_text_model()._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname


def fulltext_ranking(text: str, limit: int, **filters: Any) -> list:
    """Product pks whose words match ``text`` by Postgres full-text search, best first."""
    words = WORD.findall(text)[:MAX_WORDS]
    if not words or limit < 1:
        return []
    config = visualsearch_settings.TEXT_SEARCH_CONFIG
    every = SearchQuery(" ".join(words), config=config, search_type="plain")
    some = reduce(or_, [SearchQuery(word, config=config, search_type="plain") for word in words])
    attname = _attname()
    rows = (
        _text_rows(get_text_model()._base_manager.all(), filters)
        .filter(search_vector=some)
        .annotate(
            every=Case(
                When(Q(search_vector=every), then=Value(1)),
                default=Value(0),
                output_field=IntegerField(),
            ),
            rank=SearchRank(F("search_vector"), some),
        )
        .order_by("-every", "-rank", attname)
    )
    return list(rows.values_list(attname, flat=True)[:limit])


def semantic_ranking(
    text: str,
    limit: int,
    *,
    vector: np.ndarray | None = None,
    exclude: Iterable[Any] = (),
    **filters: Any,
) -> list:
    """Product pks whose text vectors are nearest to the description's, best first.

    ``vector`` stands for the description's vector when given (``text`` is then not read);
    products in ``exclude`` (pks) are left out. The HNSW index serves the query (iterative
    scans keep filtered queries going); when it comes back short, an exact scan over the
    filtered rows follows.
    """
    from visualsearch.query.knn import fetch

    if limit < 1:
        return []
    if vector is None:
        vector = get_text_encoder().encode_texts([text])[0]
    distance = CosineDistance("embedding", np.asarray(vector, dtype=np.float32))
    ready = _text_rows(get_text_model().objects.ready(), filters)
    product_field = visualsearch_settings.PRODUCT_FIELD
    exclude = list(exclude)
    if exclude:
        ready = ready.exclude(**{f"{product_field}__in": exclude})
    found = fetch(ready.annotate(distance=distance).order_by("distance"), product_field, limit)
    if len(found) < limit:  # "+ 0" hides the ordering from the index: an exact scan
        exact = ready.annotate(distance=distance + Value(0.0)).order_by("distance")
        found = fetch(exact, product_field, limit)
    return [pk for pk, _distance in found]


def text_ranking(
    text: str, limit: int, *, text_vector: np.ndarray | None = None, **filters: Any
) -> list[tuple[Any, float]]:
    """Full-text and semantic rankings of ``text`` fused: ``[(product pk, score), …]``.

    ``text_vector`` is the text encoder's vector of ``text`` when the caller has it already.
    """
    semantic = semantic_ranking(text, limit, vector=text_vector, **filters)
    return reciprocal_rank_fusion([fulltext_ranking(text, limit, **filters), semantic])


def hybrid_search(
    text: str,
    k: int = 8,
    *,
    vector: np.ndarray | None = None,
    text_vector: np.ndarray | None = None,
    queryset: Any = None,
    **filters: Any,
) -> list:
    """Products for a description (hybrid text ranking), with the image ranking of ``vector``
    (a photo's, CLIP's text vector, or the text bridge's) fused in when given.

    ``text_vector`` is the text encoder's vector of ``text``, when the caller has it already.

    Returns product instances best first, annotated with ``score`` (the fused reciprocal-rank
    score) and ``similarity`` (``score`` over the best score possible: 1.0 means ranked first
    everywhere) and ``distance`` (``1 - similarity``).
    """
    from visualsearch.query.knn import load_products, nearest_products

    if k < 1:
        return []
    limit = max(int(visualsearch_settings.RRF_CANDIDATES), k)
    rrf_k = int(visualsearch_settings.RRF_K)
    fused = text_ranking(text, limit, text_vector=text_vector, **filters)
    if vector is not None:
        light = get_product_model()._base_manager.only("pk")
        images = [p.pk for p in nearest_products(vector, limit, queryset=light, **filters)]
        fused = reciprocal_rank_fusion([images, [pk for pk, _score in fused]], rrf_k)
    best = 2 / (rrf_k + 1)  # first in both rankings fused
    ranked = [(pk, 1.0 - score / best) for pk, score in fused[:k]]
    products = load_products(ranked, queryset)
    for product in products:
        product.score = (1.0 - product.distance) * best
    return products
