"""How a product appears in widgets, the admin and API results, without knowing its model.

The product model is the host's: its name and price come from the fields named by the
``PRODUCT_NAME_FIELD`` / ``PRODUCT_PRICE_FIELD`` settings, its link from
``get_absolute_url()`` when it has one, and its thumbnail from its first image row (in the
image model's default ordering) that has a file. The hooks ``PRODUCT_NAME``,
``PRODUCT_PRICE``, ``PRODUCT_URL`` and ``PRODUCT_THUMBNAIL`` (callables of
``(product, request)``) replace each of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from visualsearch.conf import visualsearch_settings
from visualsearch.storage.lookup import get_image_model, get_product_model


def product_queryset(request: Any = None) -> Any:
    """The products that may be shown and looked up: the ``PRODUCT_QUERYSET`` hook's for
    ``request``, else the product model's default manager."""
    hook = visualsearch_settings.PRODUCT_QUERYSET_CLASS
    if hook is not None:
        return hook(request)
    return get_product_model()._default_manager.all()


def attach_thumbnails(products: Iterable[Any]) -> list:
    """Set ``product.visualsearch_image`` (an image row or ``None``) on each product.

    One query for all products. Returns the products as a list.
    """
    products = list(products)
    if not products:
        return products
    product_field = visualsearch_settings.PRODUCT_FIELD
    image_field = visualsearch_settings.IMAGE_FIELD
    model = get_image_model()
    attname = model._meta.get_field(product_field).attname
    first: dict[Any, Any] = {}
    rows = (
        model._default_manager.filter(**{f"{attname}__in": [p.pk for p in products]})
        .exclude(**{image_field: ""})
        .only("pk", image_field, attname)
    )
    for row in rows:
        first.setdefault(getattr(row, attname), row)
    for product in products:
        product.visualsearch_image = first.get(product.pk)
    return products


def thumbnail_url(product: Any, request: Any = None) -> str | None:
    """URL of the product's thumbnail: the ``PRODUCT_THUMBNAIL`` hook's, else its first
    image's file (after :func:`attach_thumbnails`), else ``None``."""
    hook = visualsearch_settings.PRODUCT_THUMBNAIL_CLASS
    if hook is not None:
        return hook(product, request)
    row = getattr(product, "visualsearch_image", None)
    if row is None:
        return None
    fieldfile = getattr(row, visualsearch_settings.IMAGE_FIELD)
    return fieldfile.url if fieldfile else None


def product_name(product: Any, request: Any = None) -> str:
    """The ``PRODUCT_NAME`` hook's name, else the ``PRODUCT_NAME_FIELD`` attribute."""
    hook = visualsearch_settings.PRODUCT_NAME_CLASS
    if hook is not None:
        return str(hook(product, request))
    field = visualsearch_settings.PRODUCT_NAME_FIELD
    return str(getattr(product, field, "") if field else product)


def product_price(product: Any, request: Any = None) -> Any:
    """The ``PRODUCT_PRICE`` hook's price (django-oscar prices per request), else the
    ``PRODUCT_PRICE_FIELD`` attribute; ``None`` for none."""
    hook = visualsearch_settings.PRODUCT_PRICE_CLASS
    if hook is not None:
        return hook(product, request)
    field = visualsearch_settings.PRODUCT_PRICE_FIELD
    return getattr(product, field, None) if field else None


def product_url(product: Any, request: Any = None) -> str | None:
    """The ``PRODUCT_URL`` hook's link, else ``get_absolute_url()`` where there is one."""
    hook = visualsearch_settings.PRODUCT_URL_CLASS
    if hook is not None:
        return hook(product, request)
    get_url = getattr(product, "get_absolute_url", None)
    return get_url() if callable(get_url) else None
