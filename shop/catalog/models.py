"""The demo catalog: categories, products, their images and texts (embedded by visualsearch)."""

from django.db import models
from django.urls import reverse

from visualsearch.models import EmbeddedImage, EmbeddedText


class Category(models.Model):
    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=200, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("catalog:product_list") + f"?category={self.slug}"


class Product(models.Model):
    external_id = models.CharField(max_length=100, unique=True, null=True, blank=True)
    name = models.CharField(max_length=300)
    slug = models.SlugField(max_length=300, unique=True)
    description = models.TextField(blank=True)
    category = models.ForeignKey(Category, related_name="products", on_delete=models.PROTECT)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    in_stock = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "pk"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("catalog:product_detail", args=[self.slug])

    @property
    def main_image(self):
        images = list(self.images.all())
        return images[0] if images else None


class ProductImage(EmbeddedImage):
    product = models.ForeignKey(Product, related_name="images", on_delete=models.CASCADE)
    image = models.ImageField(upload_to="products/%Y/%m/")
    position = models.PositiveIntegerField(default=0)
    alt_text = models.CharField(max_length=300, blank=True)
    # Where the catalog import took the file from (a path or URL): makes the import idempotent.
    source = models.CharField(max_length=1000, blank=True, default="")
    # The product's category, copied here and kept in step by visualsearch
    # (VISUALSEARCH["IMAGE_FILTER_FIELDS"]): category filters then read this table alone.
    category = models.ForeignKey(
        Category,
        null=True,
        blank=True,
        editable=False,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    class Meta(EmbeddedImage.Meta):
        ordering = ["position", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "source"],
                condition=~models.Q(source=""),
                name="productimage_unique_source",
            )
        ]

    def __str__(self) -> str:
        return f"{self.product} #{self.position}"


class ProductText(EmbeddedText):
    """The product's words for text search (``VISUALSEARCH["TEXT_MODEL"]``), kept in sync by
    visualsearch."""

    product = models.OneToOneField(Product, related_name="text", on_delete=models.CASCADE)

    class Meta(EmbeddedText.Meta):
        verbose_name = "product text"

    def __str__(self) -> str:
        return f"Text of {self.product_id}"
