from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, render

from visualsearch.query import similar_products

from .models import Category, Product, ProductImage

PER_PAGE = 24


def _with_images(queryset):
    return queryset.select_related("category").prefetch_related(
        Prefetch(
            "images", queryset=ProductImage.objects.only("pk", "image", "product_id", "position")
        )
    )


def product_list(request):
    products = _with_images(Product.objects.all())
    category = None
    if slug := request.GET.get("category"):
        category = get_object_or_404(Category, slug=slug)
        products = products.filter(category=category)
    page = Paginator(products, PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "catalog/product_list.html",
        {"page": page, "category": category, "categories": Category.objects.all()},
    )


def product_detail(request, slug):
    product = get_object_or_404(_with_images(Product.objects.all()), slug=slug)
    similar = similar_products(product, k=8, queryset=_with_images(Product.objects.all()))
    return render(request, "catalog/product_detail.html", {"product": product, "similar": similar})
