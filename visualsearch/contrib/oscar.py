"""django-oscar support: the hooks an Oscar shop names in its settings, and a widget template.

::

    VISUALSEARCH = {
        "IMAGE_MODEL": "catalogue.ProductImage",
        "IMAGE_FIELD": "original",
        "PRODUCT_NAME_FIELD": "title",
        "PRODUCT_PRICE": "visualsearch.contrib.oscar.product_price",
        "PRODUCT_QUERYSET": "visualsearch.contrib.oscar.product_queryset",
    }

and on the product page ``{% similar_products product
template="visualsearch/oscar/similar_products.html" %}``, which renders Oscar's own product
cards. Oscar's catalogue models stay as they are (``examples/oscar`` is such a shop).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

__all__ = ["product_price", "product_queryset"]


def product_price(product: Any, request: Any = None) -> Decimal | None:
    """The product's price from Oscar's pricing strategy: the one ``BasketMiddleware`` puts on
    the request, else the default selector's. Incl. tax where the tax is known; ``None``
    without a stock record."""
    strategy = getattr(request, "strategy", None)
    if strategy is None:
        from oscar.core.loading import get_class

        selector = get_class("partner.strategy", "Selector")()
        strategy = selector.strategy(request=request, user=getattr(request, "user", None))
    price = strategy.fetch_for_product(product).price
    if not price.exists:
        return None
    return price.incl_tax if price.is_tax_known else price.excl_tax


def product_queryset(request: Any = None) -> Any:
    """The products Oscar's catalogue shows (``browsable()``: public, not child products),
    with what the cards and prices read fetched along (``base_queryset()``)."""
    from oscar.core.loading import get_model

    return get_model("catalogue", "Product").objects.browsable().base_queryset()
