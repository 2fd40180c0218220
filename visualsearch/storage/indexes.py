"""The indexes of the image vectors: HNSW (optionally over halfvec copies, optionally partial)
and the covering B-tree for exact scans over one filter value."""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.indexes import OpClass
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.functions import Cast
from pgvector.django import HalfVectorField, HnswIndex

from visualsearch.conf import visualsearch_settings
from visualsearch.storage.fields import configured_dimensions


def image_hnsw_index(name: str = "%(class)s_hnsw", condition: Any = None) -> HnswIndex:
    """The image model's HNSW index: on ``embedding``, or with ``HNSW_HALFVEC`` on
    ``embedding::halfvec(n)`` (half the size, built faster; ``visualsearch.query`` then orders
    by the same expression). ``condition`` makes it partial
    (:mod:`visualsearch.storage.filter_indexes`)."""
    options = {
        "name": name,
        "m": visualsearch_settings.HNSW_M,
        "ef_construction": visualsearch_settings.HNSW_EF_CONSTRUCTION,
        "condition": condition,
    }
    if visualsearch_settings.HNSW_HALFVEC:
        half = Cast("embedding", HalfVectorField(dimensions=configured_dimensions()))
        return HnswIndex(OpClass(half, name="halfvec_cosine_ops"), **options)
    return HnswIndex(fields=["embedding"], opclasses=["vector_cosine_ops"], **options)


#: Longest vector a B-tree entry holds: an entry is at most 2,704 bytes (a third of a page),
#: and a float vector takes 4 bytes a dimension beside the key, product and model id.
MAX_FILTER_SCAN_DIMENSIONS = 600


def filter_scan_index(field: str, name: str | None = None) -> models.Index:
    """A B-tree on a copied filter ``field`` (``IMAGE_FILTER_FIELDS``) that also holds every
    image's vector, product, status and model id: the exact scan over one value's images then
    reads this index alone (an index-only scan), its entries side by side in ``field`` order
    however the rows lie in the table. No ``CLUSTER`` to keep up.

    Measured with ``bench/query_bench.py --covering`` (docs/performance.md). The cost: the
    index holds a copy of every vector (more than the table) and every write of a vector
    writes it too.
    Index-only scans skip the table only on pages ``VACUUM`` has marked all-visible: leave
    autovacuum on. Only for vectors of up to ``MAX_FILTER_SCAN_DIMENSIONS`` (CLIP ViT-B/32's
    512 fit; 768 and more do not fit a B-tree entry)::

        class Meta(EmbeddedImage.Meta):
            indexes = [*EmbeddedImage.Meta.indexes, filter_scan_index("category")]
    """
    dimensions = configured_dimensions()
    if dimensions > MAX_FILTER_SCAN_DIMENSIONS:
        raise ImproperlyConfigured(
            f"filter_scan_index({field!r}): a B-tree entry holds vectors of up to "
            f"{MAX_FILTER_SCAN_DIMENSIONS} dimensions, and the encoder's have {dimensions}. "
            "Leave the index out (the plain index on the field serves the exact scan) or "
            "CLUSTER the table by it instead."
        )
    # Not partial: a prepared statement's generic plan, which gets the status as a parameter,
    # cannot prove a "WHERE embedding_status = 'ready'" predicate and would pass the index by.
    include = [visualsearch_settings.PRODUCT_FIELD, "embedding_status", "embedding_model"]
    return models.Index(
        fields=[field], include=[*include, "embedding"], name=name or f"%(class)s_{field}_scan"
    )
