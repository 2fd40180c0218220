"""Queries: similar products, search by photo and by words, recommendations.

The public functions are re-exported here; :mod:`~visualsearch.query.knn` is the one k-NN
path they share, :mod:`~visualsearch.query.hybrid` fuses text rankings,
:mod:`~visualsearch.query.recommend` and :mod:`~visualsearch.query.diversity` build
"Recommended for you", :mod:`~visualsearch.query.filters` checks the API's filter settings.
Nothing here imports :mod:`visualsearch.learning` (training code).
"""

from visualsearch.encoders import TextEncodingNotSupported
from visualsearch.query.knn import nearest_products
from visualsearch.query.search import search, search_by_image, search_by_text, similar_products

__all__ = [
    "TextEncodingNotSupported",
    "nearest_products",
    "search",
    "search_by_image",
    "search_by_text",
    "similar_products",
]
