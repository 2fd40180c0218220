"""Mount with ``path("api/", include("visualsearch.api.urls"))``."""

app_name = "visualsearch-api"
urlpatterns: list = []
