"""A real Celery worker process embeds an uploaded image end to end."""

import time

import numpy as np
import pytest

from shop.catalog.models import ProductImage
from visualsearch.models import EmbeddingStatus

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_worker_embeds_uploaded_image(celery_worker_process, make_product):
    product = make_product(color="blue", images=2)
    image = product.images.first()
    assert image.embedding_status == EmbeddingStatus.PENDING

    done = wait_for(
        lambda: (
            not ProductImage.objects.filter(product=product)
            .exclude(embedding_status=EmbeddingStatus.READY)
            .exists()
        )
    )
    assert done, celery_worker_process.log.read_text()[-3000:]
    for row in ProductImage.objects.filter(product=product):
        assert row.embedding_status == EmbeddingStatus.READY
        assert np.asarray(row.embedding).shape == (32,)
        assert np.isclose(np.linalg.norm(row.embedding), 1.0, atol=1e-3)
        assert row.embedding_model.startswith("clip:tiny-clip-32:")
        assert len(row.embedding_hash) == 64
        assert row.embedded_at is not None


def test_admin_upload_reaches_ready(celery_worker_process, admin_client, make_product):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from tests.conftest import make_image_bytes

    product = make_product(images=0)
    upload = SimpleUploadedFile("photo.jpg", make_image_bytes("orange", "circle"), "image/jpeg")
    response = admin_client.post(
        "/admin/catalog/productimage/add/",
        {"product": product.pk, "image": upload, "position": 0, "alt_text": "front", "source": ""},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    row = ProductImage.objects.get(product=product)
    started = time.monotonic()
    assert wait_for(
        lambda: ProductImage.objects.filter(pk=row.pk, embedding_status="ready").exists()
    ), celery_worker_process.log.read_text()[-3000:]
    print(f"admin upload ready after {time.monotonic() - started:.2f}s")
    # The change page shows the status to staff.
    page = admin_client.get(f"/admin/catalog/productimage/{row.pk}/change/").content.decode()
    assert "Ready" in page
