"""visualsearch: visual product search for Django on Postgres + pgvector.

The public functions are importable from here (loaded on first use, so that importing the
package before Django's apps are ready stays cheap)::

    from visualsearch import similar_products, search_by_image, search_by_text
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS = {
    "similar_products": "visualsearch.query",
    "search": "visualsearch.query",
    "search_by_image": "visualsearch.query",
    "search_by_text": "visualsearch.query",
    "nearest_products": "visualsearch.query",
    "recommend": "visualsearch.query.recommend",
    "recommend_for_session": "visualsearch.query.recommend",
    "record_view": "visualsearch.query.recommend",
    "embed_images": "visualsearch.ingest.pipeline",
    "deferred_embedding": "visualsearch.ingest.handlers",
    "visualsearch_settings": "visualsearch.conf",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'visualsearch' has no attribute {name!r}")
