"""Template tags: ``{% load visualsearch %}`` then ``{% similar_products product limit=8 %}``
or ``{% recommended_products request limit=8 %}``."""

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
from visualsearch.recommend import SIMILAR, recommend_for_session

logger = logging.getLogger(__name__)
register = template.Library()

DEFAULT_TEMPLATE = "visualsearch/similar_products.html"
RECOMMENDED_TEMPLATE = "visualsearch/recommended_products.html"


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
    items = [_item(item) for item in products]
    return render_to_string(
        template_name, {"product": product, "items": items, "title": title, "limit": limit}
    )


@register.simple_tag
def recommended_products(
    request: Any,
    limit: int | None = None,
    template: str = RECOMMENDED_TEMPLATE,
    title: str = "Recommended for you",
    **filters: Any,
) -> str:
    """A grid of ``limit`` (``RECOMMEND_SIZE``) products for the shopper of ``request``.

    Products near what the shopper viewed in this session, plus exploration picks; random
    and diverse picks for a shopper with no history (see :mod:`visualsearch.recommend`).
    Keyword arguments other than ``limit``, ``template`` and ``title`` filter the products.
    Never cached (it depends on the session); the products shown are remembered in the
    session so that the next page shows others. Renders nothing when the database query
    fails (logged).
    """
    session = getattr(request, "session", None)
    try:
        products = recommend_for_session(session, None if limit is None else int(limit), **filters)
        products = attach_thumbnails(products)
    except DatabaseError:
        logger.exception("visualsearch: recommendations could not be queried")
        return ""
    if not products:
        return ""
    items = [{**_item(item), "reason": item.recommendation} for item in products]
    context = {
        "items": items,
        "title": title,
        "limit": limit,
        "personalised": any(item.recommendation == SIMILAR for item in products),
    }
    return mark_safe(render_to_string(template, context))


def _item(product: Any) -> dict[str, Any]:
    return {
        "product": product,
        "name": product_name(product),
        "url": product_url(product),
        "thumbnail": thumbnail_url(product),
        "price": product_price(product),
        "score": product.similarity,
    }


def _cache_key(pk: Any, limit: int, template_name: str, title: str, filters: dict) -> str:
    options = repr((limit, template_name, title, sorted(filters.items())))
    digest = hashlib.sha256(options.encode()).hexdigest()[:16]
    return f"similar:{pk}:{digest}"
