"""Where vectors live, and their similarity queryset.

Any image model works as it is: name it in ``VISUALSEARCH["IMAGE_MODEL"]`` and its vectors go
to :class:`ImageEmbedding`, visualsearch's own table (one row per image, created by
``migrate``). A shop that owns its image model may instead include the abstract
:class:`EmbeddedImage`, which puts the same columns on its own rows::

    class ProductImage(EmbeddedImage):
        product = models.ForeignKey(Product, related_name="images", on_delete=models.CASCADE)
        image = models.ImageField(upload_to="products/")

        class Meta(EmbeddedImage.Meta):   # keep the HNSW and status indexes
            ordering = ["position"]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.contrib.postgres.search import SearchVectorField
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.functions import Cast
from django.utils import timezone
from pgvector.django import CosineDistance, HalfVectorField, HnswIndex, VectorField

from visualsearch.conf import visualsearch_settings


class EmbeddingStatus(models.TextChoices):
    """Life cycle of an image's embedding."""

    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale (older encoder)"


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


class EmbeddingQuerySet(models.QuerySet):
    """Similarity as ordinary, chainable queryset methods."""

    def ready(self) -> EmbeddingQuerySet:
        """Rows with a vector from the active encoder (never mixes two models' vectors)."""
        return self.filter(
            embedding_status=EmbeddingStatus.READY,
            embedding_model=self.model.embedding_encoder().model_id,
        )

    def nearest(self, vector: np.ndarray | list[float]) -> EmbeddingQuerySet:
        """Ready rows ordered by cosine distance to ``vector``, annotated with ``distance``.

        The ordering is ``embedding <=> vector``, which the HNSW index serves; slice the result
        (``[:k]``) so that Postgres can stop early.
        """
        vector = np.asarray(vector, dtype=np.float32)
        return (
            self.ready().annotate(distance=CosineDistance("embedding", vector)).order_by("distance")
        )

    def counts_by_status(self) -> list[dict[str, Any]]:
        """``[{"embedding_status", "embedding_model", "count"}, …]`` for status reports."""
        return list(
            self.values("embedding_status", "embedding_model")
            .annotate(count=models.Count("pk"))
            .order_by("embedding_status", "embedding_model")
        )


def image_hnsw_index(name: str = "%(class)s_hnsw", condition: Any = None) -> HnswIndex:
    """The image model's HNSW index: on ``embedding``, or with ``HNSW_HALFVEC`` on
    ``embedding::halfvec(n)`` (half the size, built faster; ``visualsearch.query`` then orders
    by the same expression). ``condition`` makes it partial (``visualsearch.filter_indexes``)."""
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

    At 1M × 512, 5,000 images of 1 category in 200, rows in load order: ``similar_products``
    4.1 ms (raw SQL 3.4 ms) against 12.4 ms through the plain index on the field
    (``bench/query_bench.py --covering``). The cost: the index holds a copy of every vector
    (3.9 GB at 1M × 512, more than the table) and every write of a vector writes it too.
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


class EmbeddingRecord(models.Model):
    """The bookkeeping of a row whose vector a worker writes: which encoder, status, error,
    when. Base of :class:`EmbeddedImage` and :class:`EmbeddedText`, which add the vector, the
    hash of what was embedded and their indexes."""

    embedding_model = models.CharField(
        "encoder model", max_length=200, blank=True, default="", editable=False
    )
    embedding_status = models.CharField(
        "embedding status",
        max_length=16,
        choices=EmbeddingStatus.choices,
        default=EmbeddingStatus.PENDING,
        editable=False,
    )
    embedding_error = models.TextField("embedding error", blank=True, default="", editable=False)
    embedded_at = models.DateTimeField("embedded at", null=True, blank=True, editable=False)
    embedding_updated_at = models.DateTimeField(
        "embedding status changed", default=timezone.now, editable=False
    )

    objects = EmbeddingQuerySet.as_manager()

    class Meta:
        abstract = True

    @classmethod
    def embedding_encoder(cls) -> Any:
        """The encoder whose vectors this model stores."""
        raise NotImplementedError


class EmbeddedImage(EmbeddingRecord):
    """Abstract base for the host's image model: the vector and its bookkeeping."""

    embedding = EmbeddingField()
    embedding_hash = models.CharField(
        "content hash", max_length=64, blank=True, default="", editable=False
    )

    class Meta:
        abstract = True
        indexes = [
            image_hnsw_index(),
            models.Index(fields=["embedding_status", "embedding_model"], name="%(class)s_vs_st"),
        ]

    @classmethod
    def embedding_encoder(cls) -> Any:
        """The encoder whose vectors this model stores: the image ``ENCODER``."""
        from visualsearch.encoders import get_encoder

        return get_encoder()


def _image_model_label() -> str:
    """The label :class:`ImageEmbedding` links to; a placeholder while ``IMAGE_MODEL`` is
    unset (system check E005 reports it, and ``migrate`` stops on that error)."""
    label = visualsearch_settings.IMAGE_MODEL
    return label if isinstance(label, str) and label.count(".") == 1 else "visualsearch.Unset"


class ImageEmbedding(EmbeddingRecord):
    """The vector of one image of the host's ``IMAGE_MODEL``, kept in visualsearch's table.

    Used for every image model that does not include :class:`EmbeddedImage`: the host's
    models stay as they are (django-oscar's ``catalogue.ProductImage``, for example). The
    primary key is the image's, so a row and its image share one id; deleting the image
    deletes the row. Rows are created when an image is saved, and by the periodic sweep for
    images written in bulk.
    """

    image = models.OneToOneField(
        _image_model_label(),
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="visualsearch_embedding",
        verbose_name="image",
    )
    embedding = EmbeddingField()
    embedding_hash = models.CharField(
        "content hash", max_length=64, blank=True, default="", editable=False
    )
    # The image's file name when it was embedded: the sweep finds files replaced without a
    # signal (QuerySet.update) by comparing it with the image row's.
    embedded_file = models.TextField("embedded file", blank=True, default="", editable=False)

    class Meta:
        verbose_name = "image embedding"
        indexes = [
            image_hnsw_index(name="visualsearch_image_hnsw"),
            models.Index(
                fields=["embedding_status", "embedding_model"], name="visualsearch_image_st"
            ),
        ]

    def __str__(self) -> str:
        return f"Embedding of image {self.pk} ({self.embedding_status})"

    @classmethod
    def embedding_encoder(cls) -> Any:
        """The encoder whose vectors this model stores: the image ``ENCODER``."""
        from visualsearch.encoders import get_encoder

        return get_encoder()


class EmbeddedText(EmbeddingRecord):
    """Abstract base for the host's product-text model: one row per product, for text search.

    Holds the product's words twice: as a ``tsvector`` for full-text search (GIN index,
    written whenever the product is saved) and as a vector of the text encoder (HNSW index,
    written by a worker). The host adds the one-to-one link to its product::

        class ProductText(EmbeddedText):
            product = models.OneToOneField(Product, related_name="text", on_delete=CASCADE)

            class Meta(EmbeddedText.Meta):
                pass
    """

    embedding = TextEmbeddingField()
    embedding_hash = models.CharField(
        "embedded text hash", max_length=64, blank=True, default="", editable=False
    )
    # Hash of the fields, search configuration and words the search vector was built from.
    text_hash = models.CharField(
        "indexed text hash", max_length=64, blank=True, default="", editable=False
    )
    search_vector = SearchVectorField("full-text search vector", null=True, editable=False)

    class Meta:
        abstract = True
        indexes = [
            HnswIndex(
                name="%(class)s_hnsw",
                fields=["embedding"],
                opclasses=["vector_cosine_ops"],
                m=visualsearch_settings.HNSW_M,
                ef_construction=visualsearch_settings.HNSW_EF_CONSTRUCTION,
            ),
            GinIndex(fields=["search_vector"], name="%(class)s_fts"),
            models.Index(fields=["embedding_status", "embedding_model"], name="%(class)s_vs_st"),
        ]

    @classmethod
    def embedding_encoder(cls) -> Any:
        """The encoder whose vectors this model stores: the ``TEXT_ENCODER``."""
        from visualsearch.encoders import get_text_encoder

        return get_text_encoder()


class VisualSearch(models.Model):
    """No table: gives the admin's status overview and search-by-image views a place.

    A reusable app cannot ask for a custom ``AdminSite``; registering this model puts
    "Visual search overview" on the admin index, guarded by its ``view`` permission.
    """

    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = "Visual search overview"
        verbose_name_plural = "Visual search overview"

    def __str__(self) -> str:
        return str(self._meta.verbose_name)
