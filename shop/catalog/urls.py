from django.urls import path

from . import views

app_name = "catalog"
urlpatterns = [
    path("", views.product_list, name="product_list"),
    path("search/", views.search_page, name="search"),
    path("products/<slug:slug>/", views.product_detail, name="product_detail"),
]
