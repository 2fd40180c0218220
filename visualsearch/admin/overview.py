"""The staff pages hung off the table-less ``VisualSearch`` model: status overview, search.

Registered on the default admin site by ``visualsearch.admin``; URL names
``admin:visualsearch_overview`` and ``admin:visualsearch_search``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

from visualsearch.admin.duplicates import duplicates_view
from visualsearch.admin.helpers import admin_url, can_view, status_badge
from visualsearch.conf import visualsearch_settings
from visualsearch.ingest.images import preview_data_url
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_product_model
from visualsearch.web.forms import ImageUploadForm


class SearchByImageForm(ImageUploadForm):
    """Staff's search by image: a photo (required, no crop box) and how many results."""

    image = forms.FileField(
        label="Photo",
        help_text="JPEG, PNG, WebP or another common format.",
        widget=forms.ClearableFileInput(attrs={"accept": "image/*"}),
    )
    crop_x = crop_y = crop_width = crop_height = None
    limit = forms.IntegerField(label="Results", min_value=1, max_value=50, initial=12)


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
            path(
                "duplicates/",
                self.admin_site.admin_view(partial(duplicates_view, self)),
                name="visualsearch_duplicates",
            ),
            path("", overview, name="{}_{}_changelist".format(*info)),  # the admin index link
        ]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        return self.overview_view(request)

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        if not self.has_view_permission(request):
            raise PermissionDenied
        request.current_app = self.admin_site.name
        storage = image_storage()
        image_model = storage.model  # the rows with the statuses (filters of the changelist)
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
        from visualsearch.ingest.status import embedding_report, queue_backlog, queue_name

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
                    "product": getattr(
                        image_storage().image_of(row), visualsearch_settings.PRODUCT_FIELD
                    ),
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
                preview = preview_data_url(form.cleaned_data["picture"])
        else:
            form = SearchByImageForm()
        context.update(form=form, results=results, preview=preview)
        return TemplateResponse(request, self.search_template, context)

    def _search(self, request: HttpRequest, data: dict[str, Any]) -> list[dict[str, Any]]:
        from visualsearch.query.search import search
        from visualsearch.web.display import (
            attach_thumbnails,
            product_name,
            product_price,
            product_url,
            thumbnail_url,
        )

        products = attach_thumbnails(search(image=data["picture"], k=data["limit"]))
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
