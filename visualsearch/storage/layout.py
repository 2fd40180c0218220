"""Where the image vectors live, for the one path that reads and writes them.

Two layouts, one interface. An image model that includes
:class:`~visualsearch.models.EmbeddedImage` keeps its vectors on its own rows. Any other
image model (django-oscar's ``catalogue.ProductImage``, a Wagtail image, an in-house model)
keeps them in visualsearch's :class:`~visualsearch.models.ImageEmbedding` table, whose
primary key is the image's. Either way a vector row and its image have the same primary key,
and :class:`ImageStorage` turns lookups on the image model into lookups on the vector rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.db import connections, models, router
from django.db.models.constants import LOOKUP_SEP
from django.utils import timezone

from visualsearch.conf import visualsearch_settings
from visualsearch.storage.lookup import get_image_model

__all__ = ["ImageStorage", "image_storage", "ready_rows"]


@dataclass(frozen=True)
class ImageStorage:
    """The vector rows of the configured image model."""

    #: The model whose rows hold the vectors (``objects.ready()``, ``nearest()``).
    model: type
    #: The host's image model.
    image_model: type
    #: Lookup from a vector row to its image row; ``""`` when they are the same row.
    link: str

    @property
    def separate(self) -> bool:
        """Whether the vectors are in visualsearch's own table."""
        return bool(self.link)

    def on_image(self, lookup: str) -> str:
        """A lookup on the image model (``product__in``) as one on the vector rows."""
        return f"{self.link}{LOOKUP_SEP}{lookup}" if self.link else lookup

    @property
    def product(self) -> str:
        """The lookup of a vector row's product (its primary key in ``values_list``)."""
        return self.on_image(visualsearch_settings.PRODUCT_FIELD)

    @property
    def rows(self) -> models.QuerySet:
        """Every vector row, whatever the default manager hides."""
        return self.model._base_manager.all()

    def image_of(self, row: Any) -> Any:
        """The image instance of a vector row (loaded with ``select_related(link)``)."""
        return getattr(row, self.link) if self.link else row

    def with_images(self, queryset: models.QuerySet) -> models.QuerySet:
        """``queryset`` of vector rows with their images loaded in the same query."""
        return queryset.select_related(self.link) if self.link else queryset

    def mark_pending(self, pks: Iterable, *, created: bool = False) -> None:
        """Set the rows of the images ``pks`` to ``pending`` (creating the missing ones in
        visualsearch's table). ``created``: new images of the host's own table, already
        pending by the column defaults."""
        pks = list(pks)
        if not pks or (created and not self.separate):
            return
        now = timezone.now()
        pending = {
            "embedding_status": "pending",
            "embedding_error": "",
            "embedding_updated_at": now,
            "embedding_attempts": 0,  # new content: the tasks' attempts start afresh
        }
        if not self.separate:
            self.rows.filter(pk__in=pks).update(**pending)
            return
        self.rows.bulk_create(
            [self.model(pk=pk, **pending) for pk in pks],
            update_conflicts=True,
            unique_fields=["image"],
            update_fields=list(pending),
        )

    def add_missing(self, *, limit: int | None = 10_000) -> list:
        """Create ``pending`` rows for images that have none yet (written by ``bulk_create``
        or raw SQL); returns their primary keys. Nothing to do for the host-table layout."""
        if not self.separate:
            return []
        missing = list(
            self.image_model._base_manager.filter(visualsearch_embedding__isnull=True)
            .order_by("pk")
            .values_list("pk", flat=True)[:limit]
        )
        if missing:
            self.rows.bulk_create([self.model(pk=pk) for pk in missing], ignore_conflicts=True)
        return missing

    def mark_replaced(self) -> list:
        """Set ``pending`` the rows whose image's file is no longer the one embedded (replaced
        by ``QuerySet.update`` or raw SQL, which send no signal); returns their primary keys.
        One joined ``UPDATE``; nothing to do for the host-table layout, whose saves are seen.
        """
        if not self.separate:
            return []
        connection = connections[router.db_for_write(self.model)]
        quote = connection.ops.quote_name
        image_meta = self.image_model._meta
        column = quote(image_meta.get_field(visualsearch_settings.IMAGE_FIELD).column)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote(self.model._meta.db_table)} AS e SET embedding_status = %s, "
                "embedding_error = '', embedding_updated_at = %s, embedding_attempts = 0 "
                f"FROM {quote(image_meta.db_table)} AS i "
                f"WHERE i.{quote(image_meta.pk.column)} = e.{quote(self.model._meta.pk.column)} "
                "AND e.embedding_status <> %s "
                f"AND e.embedded_file IS DISTINCT FROM COALESCE(i.{column}, '') "
                f"RETURNING e.{quote(self.model._meta.pk.column)}",
                ["pending", timezone.now(), "pending"],
            )
            return [row[0] for row in cursor.fetchall()]


def image_storage() -> ImageStorage:
    """The :class:`ImageStorage` of ``VISUALSEARCH["IMAGE_MODEL"]`` (``ImproperlyConfigured``,
    check E005, when the settings do not resolve)."""
    return _storage(get_image_model())


@lru_cache(maxsize=8)
def _storage(image_model: type) -> ImageStorage:
    from visualsearch.models import EmbeddedImage, ImageEmbedding

    if issubclass(image_model, EmbeddedImage):
        return ImageStorage(image_model, image_model, "")
    linked = ImageEmbedding._meta.get_field("image").related_model
    if linked is not image_model:
        raise ImproperlyConfigured(
            f"visualsearch.ImageEmbedding links to {_label(linked)}, but "
            f'VISUALSEARCH["IMAGE_MODEL"] is {image_model._meta.label!r}: the table is made '
            "for the image model configured when the project starts and migrates."
        )
    return ImageStorage(ImageEmbedding, image_model, "image")


def _label(model: Any) -> str:
    return repr(model._meta.label) if hasattr(model, "_meta") else repr(model)


def ready_rows(model: type | None = None) -> tuple[models.QuerySet, str]:
    """``(ready vector rows, their product lookup)``: of the images by default, else of
    ``model``, an embedding model keyed by product (the product-text model)."""
    if model is None:
        storage = image_storage()
        return storage.model.objects.ready(), storage.product
    return model.objects.ready(), visualsearch_settings.PRODUCT_FIELD


def check_image_model() -> None:
    """Raise ``ImproperlyConfigured`` (E005) unless ``IMAGE_MODEL`` names a model with an
    image field ``IMAGE_FIELD`` and a foreign key ``PRODUCT_FIELD``, whose vectors fit."""
    from visualsearch.storage.lookup import get_product_model

    image_model = get_image_model()
    name = visualsearch_settings.IMAGE_FIELD
    try:
        field = image_model._meta.get_field(name)
    except (FieldDoesNotExist, TypeError):
        names = sorted(f.name for f in image_model._meta.get_fields() if _is_file(f))
        raise ImproperlyConfigured(
            f'VISUALSEARCH["IMAGE_FIELD"] = {name!r} is not a field of '
            f"{image_model._meta.label}; its file fields: {names or 'none'}."
        ) from None
    if not _is_file(field):
        raise ImproperlyConfigured(
            f'VISUALSEARCH["IMAGE_FIELD"] = {name!r} of {image_model._meta.label} is a '
            f"{type(field).__name__}, not an ImageField or FileField."
        )
    get_product_model()
    storage = image_storage()
    if storage.separate and visualsearch_settings.IMAGE_FILTER_FIELDS:
        raise ImproperlyConfigured(
            'VISUALSEARCH["IMAGE_FILTER_FIELDS"] copies product fields onto image rows that '
            "include visualsearch.models.EmbeddedImage; with visualsearch's own table, filters "
            "go through the product (leave the setting empty)."
        )


def missing_indexes() -> list[str]:
    """Names of the indexes an :class:`EmbeddedImage` model lost by declaring its own
    ``Meta.indexes`` (the HNSW index on ``embedding``, the status index)."""
    storage = image_storage()
    if storage.separate:
        return []
    indexes = storage.model._meta.indexes
    missing = []
    if not any(index.__class__.__name__ == "HnswIndex" for index in indexes):
        missing.append("HNSW index on embedding")
    if not any(
        list(getattr(index, "fields", [])) == ["embedding_status", "embedding_model"]
        for index in indexes
    ):
        missing.append("index on (embedding_status, embedding_model)")
    return missing


def _is_file(field: Any) -> bool:
    return isinstance(field, models.FileField)
