"""Django admin for staff: embedding columns and actions, neighbours, overview, search by image.

The host mixes :class:`EmbeddedImageAdminMixin` into its image ModelAdmin (and inline) and
:class:`SimilarProductsAdminMixin` into its product ModelAdmin. The status overview and the
search-by-image view hang off the table-less ``VisualSearch`` model, registered here on the
default admin site, so that they appear on the admin index for staff with its view permission.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString

from visualsearch import cache
from visualsearch.conf import get_image_model, get_product_model, visualsearch_settings
from visualsearch.images import InvalidImage
from visualsearch.models import EmbeddingQuerySet, EmbeddingStatus, VisualSearch

EMBEDDING_READONLY_FIELDS = (
    "embedding_thumbnail",
    "embedding_status_badge",
    "embedding_model",
    "embedded_at",
    "embedding_error",
)

#: Badge colours (background, text) per status; readable in the light and dark admin themes.
STATUS_COLOURS = {
    EmbeddingStatus.READY: ("#2e7d32", "#fff"),
    EmbeddingStatus.PENDING: ("#f0b400", "#222"),
    EmbeddingStatus.FAILED: ("#ba2121", "#fff"),
    EmbeddingStatus.STALE: ("#6c757d", "#fff"),
}


def status_badge(status: str) -> SafeString:
    """An embedding status as a small coloured label."""
    background, colour = STATUS_COLOURS.get(status, ("#6c757d", "#fff"))
    try:
        label = EmbeddingStatus(status).label
    except ValueError:
        label = status
    return format_html(
        '<span class="visualsearch-status visualsearch-status-{}" style="background:{};color:{};'
        'padding:1px 8px;border-radius:9px;font-size:0.85em;white-space:nowrap">{}</span>',
        status,
        background,
        colour,
        label,
    )


def admin_url(site: admin.AdminSite, model: type, view: str, *args: Any) -> str | None:
    """The admin URL of ``model``'s ``view`` (changelist, change…) on ``site``, if it has one."""
    opts = model._meta
    try:
        return reverse(
            f"{site.name}:{opts.app_label}_{opts.model_name}_{view}",
            args=args,
            current_app=site.name,
        )
    except NoReverseMatch:
        return None


def can_view(site: admin.AdminSite, request: HttpRequest, model: type) -> bool:
    """Whether ``request.user`` may open ``model``'s pages on ``site``."""
    try:
        model_admin = site.get_model_admin(model)
    except admin.sites.NotRegistered:
        return False
    return model_admin.has_view_or_change_permission(request)


@admin.action(description="Re-embed selected images", permissions=["change"])
def reembed_selected(modeladmin: admin.ModelAdmin, request: Any, queryset: Any) -> None:
    """Mark the selected rows pending and enqueue them (re-encoded even if unchanged)."""
    from visualsearch.tasks import enqueue

    pks = list(queryset.values_list("pk", flat=True))
    # update() sends no signals: drop cached widgets here (pending rows leave the results).
    queryset.update(embedding_status=EmbeddingStatus.PENDING, embedding_updated_at=timezone.now())
    cache.invalidate(using=queryset.db)
    sent = enqueue(queryset.model, pks, force=True)
    level = messages.SUCCESS if sent == len(pks) else messages.WARNING
    modeladmin.message_user(
        request, f"Enqueued {sent} of {len(pks)} image(s) for embedding.", level
    )


@admin.action(description="Mark selected images stale", permissions=["change"])
def mark_stale_selected(modeladmin: admin.ModelAdmin, request: Any, queryset: Any) -> None:
    """Mark the selected ready rows ``stale``: they leave search results until re-processed.

    Pending and failed rows are left as they are. The periodic sweep enqueues stale rows.
    """
    total = queryset.count()
    count = queryset.filter(embedding_status=EmbeddingStatus.READY).update(
        embedding_status=EmbeddingStatus.STALE, embedding_updated_at=timezone.now()
    )
    if count:
        cache.invalidate(using=queryset.db)  # update() sends no signals
    skipped = f" {total - count} not ready, left as they were." if total - count else ""
    modeladmin.message_user(
        request,
        f"Marked {count} image(s) stale: they leave search results until the background "
        f"sweep processes them again.{skipped}",
        messages.SUCCESS if count else messages.WARNING,
    )


class EmbeddedImageAdminMixin:
    """Mix into the ModelAdmin (or inline) of the image model.

    Gives the columns ``embedding_thumbnail``, ``embedding_status_badge``, ``embedding_model``,
    ``embedded_at`` (``embedding_list_display``), filters by status and encoder model, and the
    actions "re-embed selected" and "mark stale". Templates are attributes to override.
    """

    embedding_list_display = (
        "embedding_thumbnail",
        "embedding_status_badge",
        "embedding_model",
        "embedded_at",
    )
    list_filter = ("embedding_status", "embedding_model")
    actions = [reembed_selected, mark_stale_selected]
    thumbnail_template = "admin/visualsearch/thumbnail.html"
    thumbnail_size = 64

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
        from visualsearch.display import (
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
    images = EmbeddingQuerySet(get_image_model()).filter(
        **{visualsearch_settings.PRODUCT_FIELD: product}
    )
    rows = images.values("embedding_status").annotate(count=Count("pk")).order_by("-count")
    return {
        "has_ready": images.ready().exists(),
        "statuses": [
            {"count": row["count"], "badge": status_badge(row["embedding_status"])} for row in rows
        ],
    }


class SearchByImageForm(forms.Form):
    """A photo to search with; decoded and checked in :meth:`clean_image`."""

    image = forms.FileField(
        label="Photo",
        help_text="JPEG, PNG, WebP or another common format.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
    )
    limit = forms.IntegerField(label="Results", min_value=1, max_value=50, initial=12)

    def clean_image(self) -> Any:
        from visualsearch.images import open_query_image

        upload = self.cleaned_data["image"]
        max_bytes = visualsearch_settings.MAX_IMAGE_BYTES
        if upload.size is not None and upload.size > max_bytes:
            raise forms.ValidationError(
                f"The file is larger than the {filesizeformat(max_bytes)} limit."
            )
        try:
            return open_query_image(
                upload, max_bytes=max_bytes, max_pixels=visualsearch_settings.MAX_IMAGE_PIXELS
            )
        except InvalidImage as exc:
            raise forms.ValidationError(str(exc)) from None


class VisualSearchAdmin(admin.ModelAdmin):
    """The status overview (the model's changelist) and the search-by-image view.

    URL names: ``admin:visualsearch_overview`` and ``admin:visualsearch_search``.
    """

    overview_template = "admin/visualsearch/overview.html"
    search_template = "admin/visualsearch/search.html"
    recent_failures = 5

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list:
        info = self.opts.app_label, self.opts.model_name
        overview = self.admin_site.admin_view(self.overview_view)
        return [
            path("", overview, name="visualsearch_overview"),
            path(
                "search/", self.admin_site.admin_view(self.search_view), name="visualsearch_search"
            ),
            path("", overview, name="{}_{}_changelist".format(*info)),  # the admin index link
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return self.overview_view(request)

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        if not self.has_view_permission(request):
            raise PermissionDenied
        request.current_app = self.admin_site.name
        image_model = get_image_model()
        images_url = None
        if can_view(self.admin_site, request, image_model):
            images_url = admin_url(self.admin_site, image_model, "changelist")
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "images_url": images_url,
            "image_opts": image_model._meta,
            "overview_url": reverse(f"{self.admin_site.name}:visualsearch_overview"),
            "search_url": reverse(f"{self.admin_site.name}:visualsearch_search"),
        }

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Counts by status and encoder model, recent failures, the queue backlog."""
        from visualsearch.status import embedding_report, queue_backlog, queue_name

        context = self._context(request, "Visual search overview")
        report = embedding_report(failures=self.recent_failures)
        images_url = context["images_url"]

        def filtered(lookup: str, value: str) -> str | None:
            return f"{images_url}?{urlencode({lookup: value})}" if images_url and value else None

        try:
            queue = queue_name()
        except Exception:  # no Celery app configured: the backlog is unknown
            queue = None
        context.update(
            report=report,
            statuses=[
                {
                    "status": status.value,
                    "label": status.label,
                    "badge": status_badge(status),
                    "count": report.by_status.get(status.value, 0),
                    "url": filtered("embedding_status__exact", status.value),
                }
                for status in EmbeddingStatus
            ],
            status_labels=[status.label for status in EmbeddingStatus],
            models=[
                {
                    "entry": entry,
                    "counts": [entry.counts.get(status.value, 0) for status in EmbeddingStatus],
                    "url": filtered("embedding_model", entry.model_id),
                }
                for entry in report.by_model
            ],
            failures=[
                {
                    "row": row,
                    "product": getattr(row, visualsearch_settings.PRODUCT_FIELD),
                    "url": images_url and admin_url(self.admin_site, type(row), "change", row.pk),
                }
                for row in report.failures
            ],
            failed_count=report.by_status.get(EmbeddingStatus.FAILED, 0),
            failed_url=filtered("embedding_status__exact", EmbeddingStatus.FAILED),
            queue=queue,
            backlog=queue_backlog(queue) if queue else None,
            batch_size=visualsearch_settings.BATCH_SIZE,
        )
        return TemplateResponse(request, self.overview_template, context)

    def search_view(self, request: HttpRequest) -> HttpResponse:
        """Upload a photo, see the products that look most like it."""
        context = self._context(request, "Search by image")
        results, preview = None, None
        if request.method == "POST":
            form = SearchByImageForm(request.POST, request.FILES)
            if form.is_valid():
                results = self._search(request, form.cleaned_data)
                preview = _preview(form.cleaned_data["image"])
        else:
            form = SearchByImageForm()
        context.update(form=form, results=results, preview=preview)
        return TemplateResponse(request, self.search_template, context)

    def _search(self, request: HttpRequest, data: dict[str, Any]) -> list[dict[str, Any]]:
        from visualsearch.display import (
            attach_thumbnails,
            product_name,
            product_price,
            product_url,
            thumbnail_url,
        )
        from visualsearch.query import search

        products = attach_thumbnails(search(image=data["image"], k=data["limit"]))
        linked = can_view(self.admin_site, request, get_product_model())
        return [
            {
                "product": product,
                "name": product_name(product),
                "price": product_price(product),
                "similarity": product.similarity,
                "thumbnail": thumbnail_url(product),
                "url": linked and admin_url(self.admin_site, type(product), "change", product.pk),
                "site_url": product_url(product),
            }
            for product in products
        ]


def _preview(image: Any, side: int = 240) -> str:
    """A small JPEG of the uploaded photo as a ``data:`` URL (nothing is stored)."""
    preview = image.copy()
    preview.thumbnail((side, side))
    out = io.BytesIO()
    preview.save(out, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


admin.site.register(VisualSearch, VisualSearchAdmin)
