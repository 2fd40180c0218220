"""Admin helpers for the host's image model: embedding status columns, filters, re-embed action."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.utils import timezone

from visualsearch.models import EmbeddingStatus

EMBEDDING_READONLY_FIELDS = (
    "embedding_status",
    "embedding_model",
    "embedded_at",
    "embedding_error",
)


@admin.action(description="Re-embed selected images")
def reembed_selected(modeladmin: admin.ModelAdmin, request: Any, queryset: Any) -> None:
    """Mark the selected rows pending and enqueue them (re-encoded even if unchanged)."""
    from visualsearch.tasks import enqueue

    pks = list(queryset.values_list("pk", flat=True))
    queryset.update(embedding_status=EmbeddingStatus.PENDING, embedding_updated_at=timezone.now())
    sent = enqueue(queryset.model, pks, force=True)
    level = messages.SUCCESS if sent == len(pks) else messages.WARNING
    modeladmin.message_user(
        request, f"Enqueued {sent} of {len(pks)} image(s) for embedding.", level
    )


class EmbeddedImageAdminMixin:
    """Mix into the ModelAdmin (or inline) of the image model."""

    embedding_list_display = ("embedding_status", "embedding_model", "embedded_at")
    list_filter = ("embedding_status", "embedding_model")
    actions = [reembed_selected]

    def get_readonly_fields(self, request: Any, obj: Any = None) -> tuple:
        return tuple(super().get_readonly_fields(request, obj)) + EMBEDDING_READONLY_FIELDS
