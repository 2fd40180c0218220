"""The admin's "Duplicate images" page: groups of near-duplicate images, with thumbnails and
links to their products' admin pages, for staff who may see the overview.

URL name ``admin:visualsearch_duplicates`` (wired in by ``VisualSearchAdmin.get_urls``). The
page shows the groups last found with its parameters (by the page itself or by ``manage.py
visualsearch_duplicates``, kept in the ``CACHE_ALIAS`` cache); when there are none, it
looks now if the catalog has at most ``duplicates_inline_limit`` ready images, and otherwise
offers a button (a POST, which may take minutes: about 8 ms per image on 2 cores).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ImproperlyConfigured
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils.http import urlencode

from visualsearch.admin.helpers import admin_url, can_view
from visualsearch.conf import visualsearch_settings
from visualsearch.query.duplicates import (
    DuplicateGroup,
    find_duplicates,
    members,
    remember,
    remembered,
    resolve,
)
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_product_model
from visualsearch.web.display import product_name, product_queryset, product_url

__all__ = ["DuplicatesForm", "duplicates_view"]


class DuplicatesForm(forms.Form):
    """The page's parameters (GET): blank fields take the settings' values."""

    threshold = forms.FloatField(
        label="Vector similarity at least",
        required=False,
        min_value=0.01,
        max_value=1,
        help_text="Cosine similarity, 0..1 (default: DUPLICATE_THRESHOLD).",
    )
    pixel_difference = forms.FloatField(
        label="Pixel difference at most",
        required=False,
        min_value=0.001,
        max_value=1,
        help_text="0..1 (default: DUPLICATE_PIXEL_DIFFERENCE).",
    )
    across_products = forms.BooleanField(
        label="Only groups of two products or more", required=False
    )


#: What a subclass of ``VisualSearchAdmin`` may set: the template, the most ready images
#: searched when the page opens, groups per page.
DEFAULTS = {
    "duplicates_template": "admin/visualsearch/duplicates.html",
    "duplicates_inline_limit": 1_000,
    "duplicate_groups_per_page": 25,
}


def duplicates_view(model_admin: Any, request: HttpRequest) -> HttpResponse:
    """The groups of near-duplicate images (``model_admin``: the ``VisualSearchAdmin``)."""
    context = model_admin._context(request, "Duplicate images")  # refuses other users
    option = {name: getattr(model_admin, name, value) for name, value in DEFAULTS.items()}
    form = DuplicatesForm(request.GET or None)
    data = form.cleaned_data if form.is_valid() else {}
    context.update(form=form, groups=None)
    try:
        found_with = resolve(data.get("threshold"), data.get("pixel_difference"))
    except (ValueError, ImproperlyConfigured) as exc:  # a setting out of range
        context["error"] = str(exc)
        return TemplateResponse(request, option["duplicates_template"], context)
    if request.method == "POST":  # "Look now", then back to the page (POST, redirect, GET)
        _look(*found_with)
        return HttpResponseRedirect(request.get_full_path())
    found = remembered(*found_with)
    ready = image_storage().model.objects.ready().count()
    if found is None and ready <= option["duplicates_inline_limit"]:
        found = _look(*found_with)
    threshold, difference, neighbours = found_with
    context.update(threshold=threshold, pixel_difference=difference, neighbours=neighbours)
    context.update(ready=ready, found_at=found and found["found_at"])
    if found is not None:
        groups = found["groups"]
        if data.get("across_products"):
            groups = [group for group in groups if len(group.product_pks) > 1]
        paginator = Paginator(groups, option["duplicate_groups_per_page"])
        page = paginator.get_page(request.GET.get("page"))
        query = urlencode({key: v for key, v in request.GET.items() if key != "page"})
        context.update(page=page, total=len(groups), page_query=query)
        context["groups"] = _rows(model_admin, request, list(page))
    return TemplateResponse(request, option["duplicates_template"], context)


def _look(threshold: float, difference: float | None, neighbours: int) -> dict[str, Any]:
    """Find the groups now and remember them; ``{"found_at", "groups"}``."""
    groups = find_duplicates(
        threshold, pixel_difference=difference, pixel_check=difference is not None,
        neighbours=neighbours,
    )  # fmt: skip
    return remember(groups, threshold, difference, neighbours)


def _rows(model_admin: Any, request: HttpRequest, groups: list[DuplicateGroup]) -> list[dict]:
    """Each group with its images: thumbnail, product name, links to the product's and the
    image's admin pages and to the product's page. Images deleted since the groups were
    found are left out (and groups left with one image)."""
    site = model_admin.admin_site
    product_linked = can_view(site, request, get_product_model())
    image_model = image_storage().image_model
    image_linked = can_view(site, request, image_model)
    rows = members(groups, product_queryset(request))
    field = visualsearch_settings.IMAGE_FIELD
    shown = []
    for group in groups:
        images = []
        for pk in group.images:
            image, product = rows[pk]
            if image is None:
                continue
            file = getattr(image, field, None)
            images.append(
                {
                    "pk": pk,
                    "product_pk": group.products[pk],
                    "thumbnail": file.url if file else None,
                    "image_url": image_linked and admin_url(site, image_model, "change", pk),
                    "name": product_name(product, request) if product is not None else None,
                    "url": product_linked
                    and product is not None
                    and admin_url(site, type(product), "change", product.pk),
                    "site_url": product_url(product, request) if product is not None else None,
                }
            )
        if len(images) > 1:
            products = len({image["product_pk"] for image in images})
            shown.append({"group": group, "images": images, "products": products})
    return shown
