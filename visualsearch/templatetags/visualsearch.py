"""Template tags: ``{% load visualsearch %}`` then ``{% similar_products product limit=8 %}``."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django import template
from django.db import DatabaseError
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from visualsearch import cache
from visualsearch.conf import visualsearch_settings
from visualsearch.display import (
    attach_thumbnails,
    product_name,
    product_price,
    product_url,
    thumbnail_url,
)
from visualsearch.query import similar_products as query_similar_products

logger = logging.getLogger(__name__)
register = template.Library()

DEFAULT_TEMPLATE = "visualsearch/similar_products.html"


@register.simple_tag
def similar_products(
    product: Any,
    limit: int = 8,
    template: str = DEFAULT_TEMPLATE,
    title: str = "Similar products",
    **filters: Any,
) -> str:
    """A grid of the ``limit`` products most similar to ``product``, from the HNSW index.

    Keyword arguments other than ``limit``, ``template`` and ``title`` filter the products
    (``in_stock=True``). Renders nothing while the product has no embedding yet, or when
    the database query fails (logged): a product page never breaks because of the widget.
    The rendering is cached for ``WIDGET_CACHE_TIMEOUT`` seconds and dropped as soon as an
    embedding or a product changes.
    """
    if product is None or getattr(product, "pk", None) is None:
        return ""
    limit = int(limit)
    key = _cache_key(product.pk, limit, template, title, filters)
    html = cache.lookup(key)
    if html is None:
        html = _render(product, limit, template, title, filters)
        if html is None:
            return ""
        cache.store(key, html, int(visualsearch_settings.WIDGET_CACHE_TIMEOUT))
    return mark_safe(html)


def _render(product: Any, limit: int, template_name: str, title: str, filters: dict) -> str | None:
    try:
        products = attach_thumbnails(query_similar_products(product, k=limit, **filters))
    except DatabaseError:
        logger.exception("visualsearch: similar products of %r could not be queried", product)
        return None
    if not products:
        return ""
    items = [
        {
            "product": item,
            "name": product_name(item),
            "url": product_url(item),
            "thumbnail": thumbnail_url(item),
            "price": product_price(item),
            "score": item.similarity,
        }
        for item in products
    ]
    return render_to_string(
        template_name, {"product": product, "items": items, "title": title, "limit": limit}
    )


def _cache_key(pk: Any, limit: int, template_name: str, title: str, filters: dict) -> str:
    options = repr((limit, template_name, title, sorted(filters.items())))
    digest = hashlib.sha256(options.encode()).hexdigest()[:16]
    return f"similar:{pk}:{digest}"
