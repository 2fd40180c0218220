"""Mount with ``path("api/", include("visualsearch.api.urls"))``."""

from django.urls import path

from visualsearch.api import recommendations, views

app_name = "visualsearch-api"
urlpatterns = [
    path("products/<pk>/similar/", views.SimilarProductsView.as_view(), name="similar-products"),
    path("search/image/", views.ImageSearchView.as_view(), name="search-image"),
    path("search/text/", views.TextSearchView.as_view(), name="search-text"),
    path(
        "recommendations/",
        recommendations.RecommendationsView.as_view(),
        name="recommendations",
    ),
    path(
        "products/<pk>/views/",
        recommendations.ProductViewsView.as_view(),
        name="product-views",
    ),
]
