from pathlib import PurePath

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.utils.http import content_disposition_header
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from shop.catalog import views as catalog_views
from visualsearch.web.guards import search_view


def serve_media(request, path):
    """An uploaded file, on the shop's own origin: images as images, anything else (an old
    upload named ``.html`` or ``.svg``) as a download that no browser renders as a page."""
    response = serve(request, path, document_root=settings.MEDIA_ROOT)
    content_type = response.get("Content-Type", "")
    if not content_type.startswith("image/") or content_type.startswith("image/svg"):
        response["Content-Type"] = "application/octet-stream"
        response["Content-Disposition"] = content_disposition_header(True, PurePath(path).name)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("visualsearch.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # The search page counts against the API's throttle and upload limits (resolved before
    # the catalog's own route to the same view; reversing "catalog:search" is unchanged).
    path("search/", search_view(catalog_views.search_page)),
    path("", include("shop.catalog.urls")),
]
if settings.SERVE_MEDIA:
    # django.conf.urls.static.static() serves nothing unless DEBUG: this works in both.
    prefix = settings.MEDIA_URL.lstrip("/")
    urlpatterns += [re_path(rf"^{prefix}(?P<path>.*)$", serve_media)]
