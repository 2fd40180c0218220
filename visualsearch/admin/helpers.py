"""Admin building blocks: status badges, admin URLs and permissions, the re-embed actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from visualsearch.models import EmbeddingStatus
from visualsearch.storage import routing
from visualsearch.web import cache

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
    from visualsearch.ingest.tasks import enqueue

    pks = list(queryset.values_list("pk", flat=True))
    # update() sends no signals: drop cached widgets here (pending rows leave the results).
    queryset.update(
        embedding_status=EmbeddingStatus.PENDING,
        embedding_updated_at=timezone.now(),
        embedding_attempts=0,
    )
    cache.invalidate(using=routing.write_alias(queryset))
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
        cache.invalidate(using=routing.write_alias(queryset))  # update() sends no signals
    skipped = f" {total - count} not ready, left as they were." if total - count else ""
    modeladmin.message_user(
        request,
        f"Marked {count} image(s) stale: they leave search results until the background "
        f"sweep processes them again.{skipped}",
        messages.SUCCESS if count else messages.WARNING,
    )
