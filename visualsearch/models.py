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
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models
from django.utils import timezone
from pgvector.django import CosineDistance, HnswIndex, VectorField

from visualsearch.conf import visualsearch_settings
from visualsearch.storage.fields import EmbeddingField, TextEmbeddingField
from visualsearch.storage.indexes import filter_scan_index, image_hnsw_index

__all__ = [
    "EmbeddedImage",
    "EmbeddedText",
    "EncodedVector",
    "EncoderGeneration",
    "EmbeddingField",
    "EmbeddingQuerySet",
    "EmbeddingStatus",
    "GenerationState",
    "ImageEmbedding",
    "TextEmbeddingField",
    "VisualSearch",
    "filter_scan_index",
    "image_hnsw_index",
]


class EmbeddingStatus(models.TextChoices):
    """Life cycle of an image's embedding."""

    PENDING = "pending", "Pending"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    STALE = "stale", "Stale (older encoder)"


class EmbeddingQuerySet(models.QuerySet):
    """Similarity as ordinary, chainable queryset methods."""

    def ready(self) -> EmbeddingQuerySet:
        """Rows with a vector from the active encoder (never mixes two models' vectors)."""
        models_ = self.model.embedding_models()
        if len(models_) == 1:
            return self.filter(embedding_status=EmbeddingStatus.READY, embedding_model=models_[0])
        return self.filter(embedding_status=EmbeddingStatus.READY, embedding_model__in=models_)

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
    # When a task for the row was last sent: the sweep leaves rows queued recently to it.
    embedding_queued_at = models.DateTimeField(
        "embedding queued at", null=True, blank=True, editable=False
    )
    # Tasks started for the row's current content: a task gives up at TASK_MAX_ATTEMPTS.
    embedding_attempts = models.PositiveIntegerField(
        "embedding attempts", default=0, editable=False
    )

    objects = EmbeddingQuerySet.as_manager()

    class Meta:
        abstract = True

    @classmethod
    def embedding_encoder(cls) -> Any:
        """The encoder whose vectors this model stores."""
        raise NotImplementedError

    @classmethod
    def embedding_models(cls) -> tuple[str, ...]:
        """Model ids whose ready vectors :meth:`EmbeddingQuerySet.ready` returns."""
        return (cls.embedding_encoder().model_id,)


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
        """The encoder whose vectors serve queries: the image ``ENCODER``, or during an
        encoder switch the previous generation's (:mod:`visualsearch.ingest.switch`)."""
        from visualsearch.encoders.serving import serving_encoder

        return serving_encoder(cls.objects.db)

    @classmethod
    def embedding_models(cls) -> tuple[str, ...]:
        """The serving model id, and while a switch builds the new one too
        (:func:`visualsearch.encoders.serving.ready_models`)."""
        from visualsearch.encoders.serving import ready_models

        return ready_models(cls.objects.db)


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
        """The encoder whose vectors serve queries: the image ``ENCODER``, or during an
        encoder switch the previous generation's (:mod:`visualsearch.ingest.switch`)."""
        from visualsearch.encoders.serving import serving_encoder

        return serving_encoder(cls.objects.db)

    @classmethod
    def embedding_models(cls) -> tuple[str, ...]:
        """The serving model id, and while a switch builds the new one too
        (:func:`visualsearch.encoders.serving.ready_models`)."""
        from visualsearch.encoders.serving import ready_models

        return ready_models(cls.objects.db)


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
    # The product's fused vector (visualsearch.ingest.fusion, setting FUSION): its image and
    # text parts side by side, any length (the HNSW index casts it to the recipe's size).
    fused_embedding = VectorField("fused vector", null=True, blank=True, editable=False)
    fused_model = models.CharField(
        "fusion recipe", max_length=200, blank=True, default="", editable=False
    )
    fused_hash = models.CharField(
        "fused inputs hash", max_length=64, blank=True, default="", editable=False
    )
    fused_status = models.CharField(
        "fused vector status",
        max_length=16,
        choices=EmbeddingStatus.choices,
        default=EmbeddingStatus.PENDING,
        editable=False,
    )
    fused_error = models.TextField("fused vector error", blank=True, default="", editable=False)
    # Set whenever the inputs change: a fused vector is written only if it still holds.
    fused_updated_at = models.DateTimeField(
        "fused vector status changed", default=timezone.now, editable=False
    )

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
            models.Index(fields=["fused_status", "fused_model"], name="%(class)s_vs_fu"),
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


class GenerationState(models.TextChoices):
    """Where an encoder generation is in a switch (:mod:`visualsearch.ingest.switch`)."""

    SERVING = "serving", "Serving queries"
    BUILDING = "building", "Building (queries still served by the serving generation)"
    RETIRED = "retired", "Retired"


class EncoderGeneration(models.Model):
    """One image encoder the catalog was (or is being) embedded with.

    Exactly one generation serves queries; when the configured encoder changes, a new one is
    built in the background (:class:`EncodedVector` rows) and takes over once it covers the
    catalog. ``encoder`` and ``options`` rebuild the serving encoder in any process (an adapted
    encoder's projection is a content-addressed copy of its file, kept while it serves).
    """

    model_id = models.CharField("encoder model", max_length=200, unique=True)
    encoder = models.CharField("encoder class", max_length=300)
    options = models.JSONField("encoder options", default=dict, blank=True)
    dimensions = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=GenerationState.choices)
    created_at = models.DateTimeField(default=timezone.now)
    serving_since = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True, default="")  # why a switch waits or was refused
    # Contents the generation's encoder could not embed: {digest: reason} (bounded).
    failures = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "visualsearch_encodergeneration"
        verbose_name = "encoder generation"
        constraints = [
            models.UniqueConstraint(
                fields=["state"],
                condition=models.Q(state__in=["serving", "building"]),
                name="visualsearch_one_generation_per_state",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} ({self.state})"


class EncodedVector(models.Model):
    """A vector of one image content (SHA-256 ``digest``) under one encoder ``model_id``.

    Content-addressed, so identical photos share a row and a replaced file never leaves a
    wrong one. Holds two kinds of vectors outside the serving column: an adapted encoder's
    base features (a retrained projection is applied to them, nothing is re-encoded) and a
    building generation's vectors, copied into the serving column at cut-over.
    """

    model_id = models.CharField("encoder model", max_length=200)
    digest = models.CharField("content hash", max_length=64)
    vector = VectorField()  # any length: several encoders' vectors side by side, never searched
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "visualsearch_encodedvector"
        verbose_name = "encoded vector"
        constraints = [
            models.UniqueConstraint(
                fields=["model_id", "digest"], name="visualsearch_encodedvector_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} {self.digest[:12]}"
