"""Catalog adaptation: train a projection from product labels, switch to it, retrain."""

import io

import numpy as np
import pytest
from django.core.management import call_command

from shop.catalog.models import Category, ProductImage
from visualsearch.checks import check_settings
from visualsearch.encoders import get_encoder
from visualsearch.encoders.projection import Projection
from visualsearch.learning.adapt import is_held_out, precision_at_k, train_projection
from visualsearch.models import EmbeddingStatus
from visualsearch.query import similar_products

COLOURS = ["red", "blue", "green", "orange", "purple"]


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue()


@pytest.fixture
def labelled_catalog(db, make_product):
    """Five colour categories x four products (two shapes), embedded with the base encoder."""
    for colour in COLOURS:
        category = Category.objects.create(name=colour, slug=colour)
        for shape in ("square", "circle", "stripes", "square"):
            make_product(color=colour, shape=shape, category=category)
    run("visualsearch_reindex", "--no-progress")


def adapted_settings(settings, projection):
    base = settings.VISUALSEARCH
    settings.VISUALSEARCH = {
        **base,
        "ENCODER": "visualsearch.encoders.adapted.AdaptedEncoder",
        "ENCODER_OPTIONS": {
            "base": base["ENCODER"],
            "base_options": base["ENCODER_OPTIONS"],
            "projection": str(projection),
        },
    }


def test_projection_round_trip_and_digest(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8)).astype(np.float32)
    labels = [str(i % 3) for i in range(60)]
    projection = train_projection(features, labels, hidden=16, epochs=5)
    assert (projection.input_dimensions, projection.dimensions) == (8, 8)
    out = projection.apply(features)
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    loaded = Projection.load(projection.save(tmp_path / "p.npz"))
    assert loaded.digest == projection.digest and np.allclose(loaded.apply(features), out)
    assert train_projection(features, labels, hidden=16, epochs=5, seed=1).digest != loaded.digest
    with pytest.raises(ValueError, match="two different labels"):
        train_projection(features, ["x"] * 60, hidden=4, epochs=1)


def test_split_is_deterministic():
    held = [is_held_out(i, 0.2, seed=0) for i in range(10_000)]
    assert held == [is_held_out(i, 0.2, seed=0) for i in range(10_000)]
    assert 0.18 < sum(held) / len(held) < 0.22
    assert held != [is_held_out(i, 0.2, seed=1) for i in range(10_000)]


def test_precision_at_k_excludes_the_same_group():
    vectors = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=np.float32)
    assert precision_at_k(vectors, ["a", "a", "b", "b"], np.arange(4), k=1) == 1.0
    groups = [0, 0, 1, 1]  # same product: excluded, so the nearest other is the other label
    assert precision_at_k(vectors, ["a", "a", "b", "b"], np.arange(4), k=1, groups=groups) == 0


def test_adapt_trains_reports_and_explains_activation(labelled_catalog, tmp_path):
    out = run(
        "visualsearch_adapt", "--out", str(tmp_path / "p.npz"), "--holdout", "0.3",
        "--epochs", "20", "--hidden", "64", "--no-progress",
    )  # fmt: skip
    assert "20 images of 20 products, 5 labels" in out
    assert "Held-out precision@10 by category" in out and "before" in out and "after" in out
    assert "Activate it with" in out
    meta = Projection.load(tmp_path / "p.npz").meta
    assert meta["label"] == "category" and meta["base_model"].startswith("clip:tiny-clip-32")


def test_switching_to_the_adapted_encoder_derives_vectors_without_encoding(
    labelled_catalog, settings, tmp_path
):
    projection = tmp_path / "p.npz"
    run("visualsearch_adapt", "--out", str(projection), "--epochs", "20", "--hidden", "64",
        "--no-progress")  # fmt: skip
    adapted_settings(settings, projection)
    assert check_settings() == []
    model_id = get_encoder().model_id
    assert "+adapted:" in model_id
    out = run("visualsearch_reindex", "--no-progress")
    # The frozen vectors are the projection's input: all 20 derived, none encoded.
    assert "(20 of 20 image(s) derived from stored vectors)" in out and "serves now" in out
    assert set(ProductImage.objects.values_list("embedding_model", flat=True)) == {model_id}
    product = ProductImage.objects.first().product
    results = similar_products(product, k=3)
    assert len(results) == 3 and product.pk not in [p.pk for p in results]
    # Derived vectors equal what encoding the file through base + projection gives.
    row = ProductImage.objects.get(pk=ProductImage.objects.first().pk)
    from visualsearch.ingest.pipeline import embed_images

    stored = np.asarray(row.embedding)
    embed_images([row.pk], force=True)
    assert np.allclose(np.asarray(ProductImage.objects.get(pk=row.pk).embedding), stored, atol=1e-4)


def test_retraining_the_active_projection_marks_stale_and_re_embeds(
    labelled_catalog, settings, tmp_path
):
    projection = tmp_path / "p.npz"
    args = ["--out", str(projection), "--epochs", "10", "--hidden", "32", "--no-progress"]
    run("visualsearch_adapt", *args)
    adapted_settings(settings, projection)
    run("visualsearch_reindex", "--no-progress")
    first = get_encoder().model_id
    out = run("visualsearch_adapt", "--seed", "3", "--reindex", "inline", *args)
    assert "Encoding" not in out  # the base features were kept: nothing is encoded again
    second = get_encoder().model_id  # the file changed: reloaded without a restart
    assert second != first
    assert "20 of 20 image(s) derived from stored features" in out and "serves now" in out
    assert set(ProductImage.objects.values_list("embedding_model", flat=True)) == {second}
    assert set(ProductImage.objects.values_list("embedding_status", flat=True)) == {
        EmbeddingStatus.READY
    }


def test_missing_projection_is_a_clear_check_error(settings, tmp_path):
    adapted_settings(settings, tmp_path / "absent.npz")
    (message,) = check_settings()
    assert message.id == "visualsearch.E005" and "visualsearch_adapt" in message.msg
