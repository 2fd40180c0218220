"""Django admin for staff: embedding columns and actions, neighbours, overview, search by image.

Images whose vectors live in visualsearch's table get
:class:`~visualsearch.admin.mixins.ImageEmbeddingAdmin`, registered here. A host whose image
model includes ``EmbeddedImage`` mixes :class:`EmbeddedImageAdminMixin` into its image
ModelAdmin (and inline); any host may mix :class:`SimilarProductsAdminMixin` into its product
ModelAdmin. The status overview and the search-by-image view hang off the table-less
``VisualSearch`` model, registered here on the default admin site, so that they appear on the
admin index for staff with its view permission.
"""

from django.contrib import admin

from visualsearch.admin.helpers import (
    admin_url,
    can_view,
    mark_stale_selected,
    reembed_selected,
    status_badge,
)
from visualsearch.admin.mixins import (
    EmbeddedImageAdminMixin,
    ImageEmbeddingAdmin,
    SimilarProductsAdminMixin,
    register_image_embeddings,
    retry_failed_selected,
)
from visualsearch.admin.overview import VisualSearchAdmin
from visualsearch.models import VisualSearch

__all__ = [
    "EmbeddedImageAdminMixin",
    "ImageEmbeddingAdmin",
    "SimilarProductsAdminMixin",
    "VisualSearchAdmin",
    "admin_url",
    "can_view",
    "mark_stale_selected",
    "reembed_selected",
    "retry_failed_selected",
    "status_badge",
]

admin.site.register(VisualSearch, VisualSearchAdmin)
register_image_embeddings(admin.site)
