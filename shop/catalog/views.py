from django import forms
from django.core.paginator import Paginator
from django.db.models import Prefetch
from django.shortcuts import get_object_or_404, render

from visualsearch.encoders import TextEncodingNotSupported
from visualsearch.ingest.images import preview_data_url
from visualsearch.query import search
from visualsearch.query.recommend import record_view
from visualsearch.web.forms import ImageSearchForm

from .models import Category, Product, ProductImage

PER_PAGE = 24
SEARCH_RESULTS = 24


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
        {
            "page": page,
            "page_range": page.paginator.get_elided_page_range(page.number, on_each_side=2),
            "category": category,
            "categories": Category.objects.all(),
        },
    )


def product_detail(request, slug):
    product = get_object_or_404(_with_images(Product.objects.all()), slug=slug)
    record_view(request.session, product)  # "Recommended for you" learns from the views
    return render(request, "catalog/product_detail.html", {"product": product})


class ShopSearchForm(ImageSearchForm):
    category = forms.ModelChoiceField(
        Category.objects.all(),
        to_field_name="slug",
        required=False,
        empty_label="All categories",
    )


def search_page(request):
    """Search by photo (POST, optionally cropped) and/or description (GET ``?q=`` or POST)."""
    bound = request.method == "POST" or "q" in request.GET
    data = request.POST if request.method == "POST" else request.GET
    form = ShopSearchForm(data, request.FILES) if bound else ShopSearchForm()
    context = {"form": form, "results": None, "notice": "", "query_thumbnail": None}
    if bound and form.is_valid():
        picture, text = form.cleaned_data["picture"], form.cleaned_data["q"]
        filters = {}
        if form.cleaned_data["category"]:
            filters["category"] = form.cleaned_data["category"]
        try:
            # With text search on, the words are ranked by full-text and MiniLM vectors
            # together, and fused with the photo's ranking when there is one.
            context["results"] = search(
                image=picture,
                text=text,
                k=SEARCH_RESULTS,
                queryset=_with_images(Product.objects.all()),
                **filters,
            )
        except TextEncodingNotSupported:
            context["notice"] = "This shop cannot search by description yet" + (
                ", so the photo alone was used." if picture is not None else "."
            )
            context["results"] = []
            if picture is not None:
                context["results"] = search(
                    image=picture,
                    k=SEARCH_RESULTS,
                    queryset=_with_images(Product.objects.all()),
                    **filters,
                )
        if picture is not None:
            context["query_thumbnail"] = preview_data_url(picture, side=160)
    status = 400 if bound and form.errors else 200
    return render(request, "catalog/search.html", context, status=status)
