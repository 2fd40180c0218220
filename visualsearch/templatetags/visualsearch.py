"""Template tags: ``{% load visualsearch %}`` then ``{% similar_products product limit=8 %}``
(or ``… as items`` to loop with the shop's own card) or
``{% recommended_products request limit=8 %}``."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django import template
from django.db import DatabaseError
from django.template.library import parse_bits
from django.template.loader import render_to_string
from django.utils.safestring import mark_safe

from visualsearch.conf import visualsearch_settings
from visualsearch.query import similar_products as query_similar_products
from visualsearch.query.cutoff import Cutoff, resolve_cutoff
from visualsearch.query.recommend import SIMILAR, recommend_for_session
from visualsearch.web import cache
from visualsearch.web.display import (
    attach_thumbnails,
    product_name,
    product_price,
    product_queryset,
    product_url,
    thumbnail_url,
)
from visualsearch.web.guards import session_started

logger = logging.getLogger(__name__)
register = template.Library()

DEFAULT_TEMPLATE = "visualsearch/similar_products.html"
RECOMMENDED_TEMPLATE = "visualsearch/recommended_products.html"


@register.tag("similar_products")
def do_similar_products(parser: Any, token: Any) -> SimilarProductsNode:
    """``{% similar_products product limit=8 template=… title=… cutoff=… **filters %}``
    renders the widget; ``{% similar_products product limit=8 as items %}`` puts the products
    (with ``similarity`` and ``visualsearch_image``) in ``items`` instead, for the shop's own
    card.

    ``cutoff`` ends the list where scores fall away (``"0.94"``, ``"gap:2"``, ``"on"``,
    ``"off"``; default the ``RELEVANCE_CUTOFF`` setting). Keyword arguments other than
    ``limit``, ``template``, ``title`` and ``cutoff`` filter the products (``in_stock=True``).
    """
    bits = token.split_contents()
    name, bits = bits[0], bits[1:]
    target = None
    if len(bits) >= 2 and bits[-2] == "as":
        target, bits = bits[-1], bits[:-2]
    args, kwargs = parse_bits(
        parser,
        bits,
        params=["product", "limit", "template", "title", "cutoff"],
        varargs=None,
        varkw="filters",
        defaults=(8, DEFAULT_TEMPLATE, "Similar products", None),
        kwonly=[],
        kwonly_defaults=None,
        takes_context=False,
        name=name,
    )
    return SimilarProductsNode(args, kwargs, target)


class SimilarProductsNode(template.Node):
    """The ``similar_products`` tag: never breaks the product page (errors are logged)."""

    def __init__(self, args: list, kwargs: dict, target: str | None) -> None:
        self.args, self.kwargs, self.target = args, kwargs, target

    def render(self, context: Any) -> str:
        names = ["product", "limit", "template", "title", "cutoff"]
        values = dict(zip(names, [arg.resolve(context) for arg in self.args], strict=False))
        filters = {}
        for key, value in self.kwargs.items():
            (values if key in names else filters)[key] = value.resolve(context)
        request = context.get("request")
        try:
            if self.target is not None:
                context[self.target] = _similar(values.get("product"), values, filters, request)
                return ""
            return similar_products(request=request, **values, **filters)
        except Exception:  # a broken widget must not take the product page down
            logger.exception("visualsearch: similar products of %r failed", values.get("product"))
            if self.target is not None:
                context[self.target] = []
            return ""


def _similar(product: Any, values: dict, filters: dict, request: Any) -> list:
    if product is None or getattr(product, "pk", None) is None:
        return []
    limit = int(values.get("limit", 8))
    cutoff = resolve_cutoff(values.get("cutoff"))
    queryset = product_queryset(request)
    products = query_similar_products(product, k=limit, queryset=queryset, **filters)
    return attach_thumbnails(cutoff.apply(products) if cutoff else products)


def similar_products(
    product: Any,
    limit: int = 8,
    template: str = DEFAULT_TEMPLATE,
    title: str = "Similar products",
    *,
    cutoff: Any = None,
    request: Any = None,
    **filters: Any,
) -> str:
    """A grid of the ``limit`` products most similar to ``product``, from the HNSW index.

    ``cutoff`` ends the grid where scores fall away from the top hit (the forms of
    :func:`visualsearch.query.cutoff.parse_cutoff`; ``None``: the ``RELEVANCE_CUTOFF``
    setting; ``"off"``: never). Renders nothing while the product has no embedding yet. The
    rendering is cached for ``WIDGET_CACHE_TIMEOUT`` seconds and dropped as soon as an
    embedding or a product changes; not while a ``PRODUCT_*`` hook is set (its values may
    depend on the request).
    """
    if product is None or getattr(product, "pk", None) is None:
        return ""
    limit = int(limit)
    cut = resolve_cutoff(cutoff)
    cached = int(visualsearch_settings.WIDGET_CACHE_TIMEOUT) > 0 and not _hooks()
    key = _cache_key(product.pk, limit, template, title, filters, cut)
    # Read before the data: a change committed while rendering bumps past this generation.
    current = cache.generation() if cached else None
    html = cache.lookup(key, current) if current is not None else None
    if html is None:
        html = _render(product, limit, template, title, filters, request, cut)
        if html is None:
            return ""
        if current is not None:
            cache.store(key, html, int(visualsearch_settings.WIDGET_CACHE_TIMEOUT), current)
    return mark_safe(html)


def _hooks() -> bool:
    names = (
        "PRODUCT_NAME",
        "PRODUCT_PRICE",
        "PRODUCT_URL",
        "PRODUCT_THUMBNAIL",
        "PRODUCT_QUERYSET",
    )
    return any(getattr(visualsearch_settings, name) for name in names)


def _render(
    product: Any,
    limit: int,
    template_name: str,
    title: str,
    filters: dict,
    request: Any = None,
    cutoff: Cutoff | None = None,
) -> str | None:
    try:
        queryset = product_queryset(request)
        products = query_similar_products(product, k=limit, queryset=queryset, **filters)
        products = attach_thumbnails(cutoff.apply(products) if cutoff else products)
    except DatabaseError:
        logger.exception("visualsearch: similar products of %r could not be queried", product)
        return None
    if not products:
        return ""
    items = [_item(item, request) for item in products]
    return render_to_string(
        template_name,
        {"product": product, "items": items, "title": title, "limit": limit},
        request=request,
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
    and diverse picks for a shopper with no history (see :mod:`visualsearch.query.recommend`).
    Keyword arguments other than ``limit``, ``template`` and ``title`` filter the products.
    Never cached (it depends on the session); the products shown are remembered in the
    session so that the next page shows others, once the shopper has a session (a visitor
    without cookies starts none). Renders nothing when anything fails (logged).
    """
    session = getattr(request, "session", None)
    try:
        products = recommend_for_session(
            session,
            None if limit is None else int(limit),
            remember=session_started(session),
            queryset=product_queryset(request),
            **filters,
        )
        products = attach_thumbnails(products)
    except Exception:  # a broken widget must not take the page down (the encoder's file…)
        logger.exception("visualsearch: recommendations could not be queried")
        return ""
    if not products:
        return ""
    items = [{**_item(item, request), "reason": item.recommendation} for item in products]
    context = {
        "items": items,
        "title": title,
        "limit": limit,
        "personalised": any(item.recommendation == SIMILAR for item in products),
    }
    return mark_safe(render_to_string(template, context, request=request))


def _item(product: Any, request: Any = None) -> dict[str, Any]:
    return {
        "product": product,
        "name": product_name(product, request),
        "url": product_url(product, request),
        "thumbnail": thumbnail_url(product, request),
        "price": product_price(product, request),
        "score": product.similarity,
    }


def _cache_key(
    pk: Any, limit: int, template_name: str, title: str, filters: dict, cutoff: Any = None
) -> str:
    options = repr((limit, template_name, title, sorted(filters.items())))
    if cutoff is not None:  # keys of widgets without a cut-off stay what they were
        options += f"|cutoff={cutoff!r}"
    digest = hashlib.sha256(options.encode()).hexdigest()[:16]
    return f"similar:{pk}:{digest}"
