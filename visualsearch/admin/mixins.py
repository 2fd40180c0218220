"""ModelAdmin pieces: the embedding columns of an ``EmbeddedImage`` model's admin, the
similar-products section of a product's page, and the admin of visualsearch's own table."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from visualsearch.admin.helpers import (
    EMBEDDING_READONLY_FIELDS,
    admin_url,
    mark_stale_selected,
    reembed_selected,
    status_badge,
)
from visualsearch.conf import visualsearch_settings
from visualsearch.models import EmbeddingQuerySet, EmbeddingStatus, ImageEmbedding
from visualsearch.storage import routing
from visualsearch.storage.layout import image_storage
from visualsearch.web.forms import EmbeddableImageField


@admin.action(description="Retry failed embeddings", permissions=["change"])
def retry_failed_selected(modeladmin: admin.ModelAdmin, request: Any, queryset: Any) -> None:
    """Set the selected ``failed`` rows ``pending`` again (error cleared, attempts afresh) and
    enqueue them once the request's transaction commits; other rows are left as they are."""
    from visualsearch.ingest.tasks import enqueue

    total = queryset.count()
    pks = list(
        queryset.filter(embedding_status=EmbeddingStatus.FAILED).values_list("pk", flat=True)
    )
    queryset.model._base_manager.filter(pk__in=pks, embedding_status=EmbeddingStatus.FAILED).update(
        embedding_status=EmbeddingStatus.PENDING,
        embedding_error="",
        embedding_attempts=0,
        embedding_updated_at=timezone.now(),
    )
    sent: list[int] = []
    using = routing.write_alias(queryset)  # where the update() above wrote
    transaction.on_commit(lambda: sent.append(enqueue(queryset.model, pks)), using=using)
    skipped = f" {total - len(pks)} not failed, left as they were." if total > len(pks) else ""
    if sent:
        text = f"Enqueued {sent[0]} of {len(pks)} failed image(s) again."
        level = messages.SUCCESS if pks and sent[0] == len(pks) else messages.WARNING
    else:  # inside the request's transaction (ATOMIC_REQUESTS): sent when it commits
        text, level = f"{len(pks)} failed image(s) will be enqueued again.", messages.SUCCESS
    modeladmin.message_user(request, text + skipped, level)


class EmbeddedImageAdminMixin:
    """Mix into the ModelAdmin (or inline) of the image model.

    Gives the columns ``embedding_thumbnail``, ``embedding_status_badge``, ``embedding_model``,
    ``embedded_at`` (``embedding_list_display``), filters by status and encoder model, the
    actions "re-embed selected", "retry failed" and "mark stale", and an upload field that
    refuses files the worker could not use (:class:`visualsearch.web.forms.EmbeddableImageField`).
    Templates are attributes to override.
    """

    embedding_list_display = (
        "embedding_thumbnail",
        "embedding_status_badge",
        "embedding_model",
        "embedded_at",
    )
    list_filter = ("embedding_status", "embedding_model")
    actions = [reembed_selected, retry_failed_selected, mark_stale_selected]
    thumbnail_template = "admin/visualsearch/thumbnail.html"
    thumbnail_size = 64

    def formfield_for_dbfield(self, db_field: Any, request: Any, **kwargs: Any) -> Any:
        # Uploads the worker could not use are refused in the form, with the reason.
        if db_field.name == visualsearch_settings.IMAGE_FIELD:
            kwargs.setdefault("form_class", EmbeddableImageField)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_readonly_fields(self, request: Any, obj: Any = None) -> tuple:
        fields = tuple(super().get_readonly_fields(request, obj)) + EMBEDDING_READONLY_FIELDS
        # The plain status field is shown only where the host lists it (it is not editable).
        declared = flatten_fieldsets(self.fieldsets) if self.fieldsets else (self.fields or ())
        if "embedding_status" in declared:
            fields += ("embedding_status",)
        return fields

    @admin.display(description="thumbnail")
    def embedding_thumbnail(self, obj: Any) -> SafeString:
        if obj.pk is None:  # an inline's empty extra form
            return SafeString("")
        fieldfile = getattr(obj, visualsearch_settings.IMAGE_FIELD, None)
        return render_to_string(
            self.thumbnail_template,
            {"url": fieldfile.url if fieldfile else None, "size": self.thumbnail_size},
        )

    @admin.display(description="embedding status", ordering="embedding_status")
    def embedding_status_badge(self, obj: Any) -> SafeString:
        return status_badge(obj.embedding_status) if obj.pk is not None else SafeString("")


class SimilarProductsAdminMixin:
    """Mix into the product ModelAdmin: a read-only "Similar products" section on its page.

    Lists the product's nearest neighbours (thumbnail, name, similarity, link to their admin
    page), or says why there are none yet.
    """

    similar_products_limit = 8
    similar_products_template = "admin/visualsearch/similar_products.html"
    similar_products_fieldset = "Similar products (visual search)"

    def get_readonly_fields(self, request: Any, obj: Any = None) -> tuple:
        return tuple(super().get_readonly_fields(request, obj)) + ("similar_products",)

    def get_fields(self, request: Any, obj: Any = None) -> list:
        return [name for name in super().get_fields(request, obj) if name != "similar_products"]

    def get_fieldsets(self, request: Any, obj: Any = None) -> list:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None and "similar_products" not in flatten_fieldsets(fieldsets):
            fieldsets.append((self.similar_products_fieldset, {"fields": ["similar_products"]}))
        return fieldsets

    @admin.display(description="nearest neighbours")
    def similar_products(self, obj: Any) -> SafeString:
        from visualsearch import query
        from visualsearch.web.display import (
            attach_thumbnails,
            product_name,
            product_price,
            thumbnail_url,
        )

        if obj is None or obj.pk is None:
            return SafeString("")
        products = attach_thumbnails(query.similar_products(obj, k=self.similar_products_limit))
        results = [
            {
                "product": product,
                "name": product_name(product),
                "price": product_price(product),
                "similarity": product.similarity,
                "thumbnail": thumbnail_url(product),
                "url": admin_url(self.admin_site, type(product), "change", product.pk),
            }
            for product in products
        ]
        context = {"results": results, "size": 96}
        if not results:
            context.update(_image_statuses(obj))
        return render_to_string(self.similar_products_template, context)


def _image_statuses(product: Any) -> dict[str, Any]:
    """Why a product has no neighbours: its image rows by status, and whether one is ready."""
    storage = image_storage()
    images = EmbeddingQuerySet(storage.model).filter(**{storage.product: product})
    rows = images.values("embedding_status").annotate(count=Count("pk")).order_by("-count")
    return {
        "has_ready": images.ready().exists(),
        "statuses": [
            {"count": row["count"], "badge": status_badge(row["embedding_status"])} for row in rows
        ],
    }


class ImageEmbeddingAdmin(admin.ModelAdmin):
    """visualsearch's own vector rows (images of a model that does not include
    ``EmbeddedImage``): status, encoder, error and the image, with the re-embed actions.
    Registered on the default site when those rows are in use; nothing here is editable."""

    list_display = (
        "embedding_thumbnail",
        "image_link",
        "product",
        "embedding_status_badge",
        "embedding_model",
        "embedded_at",
        "embedding_error",
    )
    list_filter = ("embedding_status", "embedding_model")
    search_fields = ("=pk",)
    actions = [reembed_selected, retry_failed_selected, mark_stale_selected]
    thumbnail_template = "admin/visualsearch/thumbnail.html"
    thumbnail_size = 64

    def get_queryset(self, request: HttpRequest) -> Any:
        storage = image_storage()
        return super().get_queryset(request).select_related(storage.product)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows follow the images

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple:
        return (
            "image_link",
            "product",
            "embedding_thumbnail",
            "embedding_status_badge",
            "embedding_model",
            "embedding_hash",
            "embedded_at",
            "embedding_updated_at",
            "embedding_error",
        )

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple:
        return self.get_readonly_fields(request, obj)

    @admin.display(description="image")
    def image_link(self, obj: Any) -> Any:
        url = admin_url(self.admin_site, type(obj.image), "change", obj.pk)
        return format_html('<a href="{}">{}</a>', url, obj.image) if url else str(obj.image)

    @admin.display(description="product")
    def product(self, obj: Any) -> Any:
        return getattr(obj.image, visualsearch_settings.PRODUCT_FIELD)

    @admin.display(description="thumbnail")
    def embedding_thumbnail(self, obj: Any) -> SafeString:
        fieldfile = getattr(obj.image, visualsearch_settings.IMAGE_FIELD, None)
        return render_to_string(
            self.thumbnail_template,
            {"url": fieldfile.url if fieldfile else None, "size": self.thumbnail_size},
        )

    @admin.display(description="embedding status", ordering="embedding_status")
    def embedding_status_badge(self, obj: Any) -> SafeString:
        return status_badge(obj.embedding_status)


def register_image_embeddings(site: admin.AdminSite) -> None:
    """Register :class:`ImageEmbeddingAdmin` on ``site`` when visualsearch's table is in use."""
    try:
        separate = image_storage().separate
    except ImproperlyConfigured:
        return  # reported by system check visualsearch.E005
    if separate and not site.is_registered(ImageEmbedding):
        site.register(ImageEmbedding, ImageEmbeddingAdmin)
