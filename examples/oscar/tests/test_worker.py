"""Oscar's own ProductImage rows embedded by a real Celery worker process, through
visualsearch's side table: uploads, bulk imports picked up by the sweep, the admin action."""

from __future__ import annotations

import pytest
from django.core.files import File
from django.urls import reverse
from oscar.apps.catalogue.models import Product, ProductClass, ProductImage

from visualsearch.models import ImageEmbedding

pytestmark = pytest.mark.slow


def _statuses(images) -> list[str]:
    rows = dict(
        ImageEmbedding.objects.filter(image__in=images).values_list("image_id", "embedding_status")
    )
    return [rows.get(image.pk) for image in images]


def test_saved_oscar_images_are_embedded_by_the_worker(worker, make_catalogue, wait_for):
    products = make_catalogue(8)
    images = list(ProductImage.objects.filter(product__in=products))
    assert len(images) == 8
    # Oscar's table is untouched: the vectors live in visualsearch's own table.
    assert not any(f.name.startswith("embedding") for f in ProductImage._meta.get_fields())

    wait_for(lambda: _statuses(images) == ["ready"] * 8, "8 ready ImageEmbedding rows")

    rows = ImageEmbedding.objects.filter(image__in=images)
    for row in rows:
        assert row.embedding is not None and len(row.embedding) > 0
        assert row.embedding_model and row.embedding_hash and not row.embedding_error
    assert "visualsearch" in worker.log.read_text()


def test_a_replaced_photo_is_embedded_again(worker, make_catalogue, photos, wait_for):
    products = make_catalogue(2)
    image = ProductImage.objects.get(product=products[0])
    wait_for(lambda: _statuses([image]) == ["ready"], "the first vector")
    before = ImageEmbedding.objects.get(pk=image.pk)

    # What Oscar's dashboard does when staff upload another photo for the product.
    with open(photos[-1]["path"], "rb") as handle:
        image.original = File(handle, name="replacement.jpg")
        image.save()

    def embedded_again() -> bool:
        row = ImageEmbedding.objects.get(pk=image.pk)
        return row.embedding_status == "ready" and row.embedding_hash != before.embedding_hash

    wait_for(embedded_again, "the replaced photo's new vector")
    image.delete()
    assert not ImageEmbedding.objects.filter(pk=image.pk).exists()


def test_oscars_renumbering_on_delete_enqueues_nothing(worker, make_catalogue, wait_for):
    """Oscar saves the remaining images of a product when one is deleted (display_order):
    their files did not change, so visualsearch sends no task."""
    from oscar_example.celery import app

    (product,) = make_catalogue(1)
    source = product.images.get()
    for order in (1, 2):
        ProductImage.objects.create(
            product=product, original=source.original.name, display_order=order
        )
    images = list(product.images.all())
    wait_for(lambda: _statuses(images) == ["ready"] * 3, "3 ready rows")
    log = worker.log
    embeds = log.read_text().count("Task visualsearch.embed_images[")
    sweeps = log.read_text().count("visualsearch.sweep_pending[")
    assert embeds >= 2  # "received" and "succeeded" lines of the tasks so far

    product.images.get(display_order=0).delete()
    # A task sent after the delete: once the worker has run it, it has seen everything before.
    app.send_task("visualsearch.sweep_pending")
    wait_for(
        lambda: log.read_text().count("visualsearch.sweep_pending[") >= sweeps + 2,
        "the sweep to be received and to finish",
    )

    assert list(product.images.values_list("display_order", flat=True)) == [0, 1]
    assert log.read_text().count("Task visualsearch.embed_images[") == embeds


def test_bulk_created_images_are_picked_up_by_the_sweep(worker, make_catalogue, wait_for):
    from oscar_example.celery import app

    (product,) = make_catalogue(1)
    wait_for(lambda: _statuses(list(product.images.all())) == ["ready"], "the first image's vector")
    # A catalogue import writes images with bulk_create: no post_save, so no row and no task.
    source = product.images.get()
    others = Product.objects.bulk_create(
        Product(
            product_class=ProductClass.objects.get(), title=f"Imported {n}", slug=f"imported-{n}"
        )
        for n in range(3)
    )
    imported = ProductImage.objects.bulk_create(
        ProductImage(product=other, original=source.original.name, display_order=0)
        for other in others
    )
    assert _statuses(imported) == [None, None, None]

    # What beat sends every SWEEP interval; the worker creates the rows and embeds them.
    app.send_task("visualsearch.sweep_pending")

    wait_for(lambda: _statuses(imported) == ["ready"] * 3, "the sweep to embed 3 imported images")


def test_admin_reembed_action_on_oscar_images(worker, make_catalogue, wait_for, client):
    from django.contrib.auth import get_user_model

    products = make_catalogue(3)
    images = list(ProductImage.objects.filter(product__in=products).order_by("pk"))
    wait_for(lambda: _statuses(images) == ["ready"] * 3, "3 ready rows")
    first_embedded = dict(
        ImageEmbedding.objects.filter(image__in=images).values_list("pk", "embedded_at")
    )

    staff = get_user_model().objects.create_superuser(
        "staff", "staff@example.com", "pw", first_name="S"
    )
    client.force_login(staff)
    assert "Visual search overview" in client.get("/admin/").content.decode()
    changelist = reverse("admin:visualsearch_imageembedding_changelist")
    assert changelist == "/admin/visualsearch/imageembedding/"
    page = client.get(changelist)
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count("ready") >= 3
    for product in products:
        assert product.title in html
    assert client.get(changelist, {"embedding_status__exact": "pending"}).status_code == 200

    response = client.post(
        changelist,
        {
            "action": "reembed_selected",
            "_selected_action": [str(image.pk) for image in images[:2]],
        },
        follow=True,
    )
    assert response.status_code == 200
    assert "Enqueued 2 of 2 image(s) for embedding." in response.content.decode()

    def reembedded() -> bool:
        rows = dict(
            ImageEmbedding.objects.filter(image__in=images[:2]).values_list("pk", "embedded_at")
        )
        return all(rows[image.pk] != first_embedded[image.pk] for image in images[:2])

    wait_for(reembedded, "the 2 selected images to be embedded again")
    assert _statuses(images) == ["ready"] * 3
    untouched = ImageEmbedding.objects.get(pk=images[2].pk)
    assert untouched.embedded_at == first_embedded[images[2].pk]
