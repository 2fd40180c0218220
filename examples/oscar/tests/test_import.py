"""Oscar's own catalogue and image importers (load_photos.py) feed visualsearch."""

from __future__ import annotations

from decimal import Decimal

from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from oscar.apps.catalogue.models import Product, ProductImage

from visualsearch.models import ImageEmbedding


def test_oscar_importers_then_reindex(db, client, photos_dir):
    from load_photos import load  # examples/oscar is on the path (pytest.ini)

    load(photos_dir, limit=6)

    images = ProductImage.objects.all()
    assert Product.objects.count() == images.count() == 6
    # Saved through Oscar's importer: visualsearch's post_save handler made the rows.
    rows = ImageEmbedding.objects.filter(image__in=images)
    assert sorted(rows.values_list("embedding_status", flat=True)) == ["pending"] * 6

    call_command("visualsearch_reindex", "--no-progress", verbosity=0)

    assert sorted(rows.values_list("embedding_status", flat=True)) == ["ready"] * 6
    product = Product.objects.order_by("pk")[2]
    photo = photos_dir / "images" / f"{product.upc.removeprefix('fashion-')}.jpg"
    upload = SimpleUploadedFile("q.jpg", photo.read_bytes(), content_type="image/jpeg")
    response = client.post("/api/search/image/", {"image": upload, "limit": 3})
    assert response.status_code == 200
    first = response.json()["results"][0]
    assert first["id"] == product.pk
    assert Decimal(first["price"]) == product.stockrecords.get().price
