from django.contrib import admin

from visualsearch.admin import EmbeddedImageAdminMixin, SimilarProductsAdminMixin

from .models import Category, Product, ProductImage


class ProductImageInline(EmbeddedImageAdminMixin, admin.TabularInline):
    model = ProductImage
    extra = 1
    fields = (
        "embedding_thumbnail",
        "image",
        "position",
        "alt_text",
        "embedding_status_badge",
    )


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name",)


@admin.register(Product)
class ProductAdmin(SimilarProductsAdminMixin, admin.ModelAdmin):
    list_display = ("name", "category", "price", "in_stock", "external_id")
    list_filter = ("category", "in_stock")
    search_fields = ("name", "external_id")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [ProductImageInline]


@admin.register(ProductImage)
class ProductImageAdmin(EmbeddedImageAdminMixin, admin.ModelAdmin):
    list_display = (
        "embedding_thumbnail",
        "__str__",
        "embedding_status_badge",
        "embedding_model",
        "embedded_at",
    )
    list_display_links = ("embedding_thumbnail", "__str__")
    list_select_related = ("product",)
    raw_id_fields = ("product",)
    search_fields = ("product__name",)
