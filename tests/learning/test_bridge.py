"""The learned text → image bridge: training, the command, search with it, its checks.

Real parts throughout: the tiny CLIP without its text tower as the image encoder (the offline
case), the real MiniLM text model, Postgres with the catalog's vectors.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.core.management.base import CommandError

from shop.catalog.models import Category, Product, ProductImage, ProductText
from tests.conftest import make_image_bytes
from tests.encoders import image_only_settings
from visualsearch.checks import check_settings
from visualsearch.encoders import get_encoder, get_text_encoder
from visualsearch.encoders.bridge import KIND, get_bridge, load_bridge
from visualsearch.encoders.projection import Projection
from visualsearch.ingest.pipeline import embed_images
from visualsearch.ingest.texts import embed_texts
from visualsearch.learning.adapt import is_held_out
from visualsearch.learning.bridge import catalog_pairs, retrieval_at_k, train_bridge
from visualsearch.query import search_by_text
from visualsearch.query.hybrid import reciprocal_rank_fusion, text_ranking

COLOURS = ["red", "blue", "green", "orange", "purple", "black", "yellow", "brown"]
SHAPES = {"square": "box", "circle": "ball", "stripes": "scarf"}


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def offline_shop(settings):
    """Text search on, image encoder without a text tower (the offline demo's case)."""
    settings.VISUALSEARCH = image_only_settings(
        {**settings.VISUALSEARCH, "TEXT_MODEL": "catalog.ProductText"}
    )
    return settings


@pytest.fixture
def catalog(offline_shop):
    """24 products, one photo each (a colour × shape, all different), named after both;
    category by shape. Images and texts embedded."""
    for shape, noun in SHAPES.items():
        category = Category.objects.create(name=noun, slug=noun)
        for colour in COLOURS:
            product = Product.objects.create(
                name=f"{colour.title()} {noun}", slug=f"{colour}-{noun}", category=category,
                description=f"A {colour} {noun} with a {shape} pattern.",
            )  # fmt: skip
            ProductImage.objects.create(
                product=product,
                image=ContentFile(make_image_bytes(colour, shape), name=f"{colour}-{shape}.jpg"),
            )
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    embed_texts(ProductText.objects.values_list("pk", flat=True))
    return offline_shop


def constant_bridge(target: np.ndarray, text_model: str, image_model: str) -> Projection:
    """A bridge that reads every text as ``target``: ReLU(0·x + 1) · 0 + target."""
    text_d, hidden = get_text_encoder().dimensions, 4
    return Projection(
        w1=np.zeros((text_d, hidden), np.float32),
        b1=np.ones(hidden, np.float32),
        w2=np.zeros((hidden, len(target)), np.float32),
        b2=np.asarray(target, np.float32),
        meta={"kind": KIND, "text_model": text_model, "image_model": image_model},
    )


def e005(settings) -> str:
    (message,) = check_settings()
    assert message.id == "visualsearch.E005"
    return message.msg


# --- training, without the database ------------------------------------------------------------


def test_training_learns_pairs_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    texts = rng.normal(size=(200, 16)).astype(np.float32)
    images = np.tanh(texts @ rng.normal(size=(16, 12))).astype(np.float32)  # a hidden relation
    train, test = np.arange(150), np.arange(150, 200)
    bridge = train_bridge(texts[train], images[train], hidden=64, epochs=60, batch_size=32)
    assert (bridge.input_dimensions, bridge.dimensions) == (16, 12)
    assert bridge.meta["kind"] == KIND and 0 < bridge.meta["temperature"] <= 0.07 + 1e-3
    bridged = bridge.apply(texts)
    assert np.allclose(np.linalg.norm(bridged, axis=1), 1, atol=1e-5)
    # Pairs it never saw are found far above chance (5 of 200 = 0.025 at k=5).
    held = retrieval_at_k(bridged[test], images, test, k=5)["recall@5"]
    assert held > 0.5, held
    loaded = Projection.load(bridge.save(tmp_path / "bridge.npz"))
    assert loaded.digest == bridge.digest and loaded.meta == bridge.meta
    assert np.allclose(loaded.apply(texts), bridged)
    with pytest.raises(ValueError, match="one row per pair"):
        train_bridge(texts, images[:10])
    with pytest.raises(ValueError, match="at least two"):
        train_bridge(texts[:1], images[:1])


def test_retrieval_at_k_counts_own_photo_and_labels():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    queries = np.array([[1, 0.05], [0.05, 1], [1, 0]], dtype=np.float32)
    own = [1, 3, 2]  # the third query's own photo is the farthest
    metrics = retrieval_at_k(queries, gallery, own, labels=["a", "a", "b", "b"], k=2)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["precision@2"] == pytest.approx((1 + 1 + 0) / 3)
    assert "precision@2" not in retrieval_at_k(queries, gallery, own, k=2)


# --- the command ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_command_trains_reports_held_out_numbers_and_writes_a_loadable_file(catalog, tmp_path):
    out_path = tmp_path / "bridges" / "bridge.npz"
    out = run(
        "visualsearch_bridge", "--out", str(out_path), "--holdout", "0.25", "--label",
        "category", "--epochs", "40", "--hidden", "64", "--batch-size", "8", "--no-progress",
    )  # fmt: skip
    pks, texts, images = catalog_pairs()
    assert len(pks) == 24 and texts.shape == (24, 384) and images.shape[0] == 24
    assert "24 products with a text vector (text:all-MiniLM-L6-v2:" in out
    assert "Training products: own photo among the 10 nearest of all 24 products' photos" in out
    assert "Held-out products: own photo among the 10 nearest" in out
    assert "precision@10 by category" in out and "(chance 0.417)" in out
    assert f"Wrote {out_path}" in out and "VISUALSEARCH['TEXT_BRIDGE']" in out

    bridge = Projection.load(out_path)
    meta = bridge.meta
    assert meta["text_model"] == get_text_encoder().model_id
    assert meta["image_model"] == get_encoder().model_id
    assert meta["products"] == 24 and meta["split_key"] == "pk" and meta["label"] == "category"
    held = sum(is_held_out(pk, 0.25) for pk in pks)
    assert meta["pairs"] == 24 - held and 0 < held < 24
    for name in ("training_recall@10", "heldout_recall@10", "heldout_precision@10"):
        assert 0 <= meta[name] <= 1
    assert meta["training_recall@10"] > 10 / 24  # it learned its training pairs
    assert (bridge.input_dimensions, bridge.dimensions) == (384, get_encoder().dimensions)

    catalog.VISUALSEARCH = {**catalog.VISUALSEARCH, "TEXT_BRIDGE": str(out_path)}
    assert check_settings() == []
    assert get_bridge().digest == load_bridge(out_path).digest == bridge.digest
    results = search_by_text("Blue ball", 5)  # served with the bridge fused in
    assert len(results) == 5 and "Blue ball" in [product.name for product in results]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--holdout", "1"], "--holdout must be in"),
        (["--holdout", "-0.1"], "--holdout must be in"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--label", "colour"], "'colour' is not a product field"),
        (["--split-key", "nope"], "'nope' is not a product field"),
        # Held out by a hash of the pk: at 0.99 one pk sequence in ~40 left two to train on.
        (["--holdout", "0.9999999"], "left to train on: lower --holdout"),
    ],
)
def test_bad_arguments_are_command_errors(catalog, tmp_path, args, message):
    with pytest.raises(CommandError, match=message):
        run("visualsearch_bridge", "--out", str(tmp_path / "b.npz"), "--no-progress", *args)
    assert not (tmp_path / "b.npz").exists()


@pytest.mark.django_db
def test_command_needs_an_output_text_search_and_an_embedded_catalog(offline_shop, tmp_path):
    with pytest.raises(CommandError, match="Give --out"):
        run("visualsearch_bridge", "--no-progress")
    with pytest.raises(CommandError, match="is a directory"):
        run("visualsearch_bridge", "--out", str(tmp_path), "--no-progress")
    with pytest.raises(CommandError, match="embed the catalog first"):
        run("visualsearch_bridge", "--out", str(tmp_path / "b.npz"), "--no-progress")
    offline_shop.VISUALSEARCH = {**offline_shop.VISUALSEARCH, "TEXT_MODEL": None}
    with pytest.raises(CommandError, match="set VISUALSEARCH\\['TEXT_MODEL'\\]"):
        run("visualsearch_bridge", "--out", str(tmp_path / "b.npz"), "--no-progress")


# --- search with the bridge ---------------------------------------------------------------------


@pytest.mark.django_db
def test_text_search_fuses_the_bridged_image_ranking(catalog, tmp_path):
    text = "a warm scarf"
    plain = [product.pk for product in search_by_text(text, 24)]
    # A bridge that reads every description as the photo of the purple ball.
    target_product = Product.objects.get(name="Purple ball")
    target = np.asarray(ProductImage.objects.get(product=target_product).embedding)
    path = constant_bridge(target, get_text_encoder().model_id, get_encoder().model_id).save(
        tmp_path / "bridge.npz"
    )
    catalog.VISUALSEARCH = {**catalog.VISUALSEARCH, "TEXT_BRIDGE": str(path)}
    assert check_settings() == []
    bridged = [product.pk for product in search_by_text(text, 24)]

    # Expected: the photos ranked by cosine to the bridged vector (exact, in NumPy), fused with
    # the hybrid text ranking by reciprocal rank fusion.
    rows = list(ProductImage.objects.values_list("product_id", "embedding"))
    vectors = np.stack([np.asarray(vector) for _pk, vector in rows])
    cosine = vectors @ target / np.linalg.norm(vectors, axis=1) / np.linalg.norm(target)
    image_ranking = [rows[i][0] for i in np.argsort(-cosine, kind="stable")]
    text_pks = [pk for pk, _score in text_ranking(text, 100)]
    expected = [pk for pk, _score in reciprocal_rank_fusion([image_ranking, text_pks])]
    assert bridged == expected[:24]
    assert bridged != plain
    assert bridged.index(target_product.pk) < plain.index(target_product.pk)
    assert image_ranking[0] == target_product.pk


@pytest.mark.django_db
def test_a_text_tower_makes_the_bridge_unused(catalog, settings, tmp_path):
    path = tmp_path / "bridge.npz"
    base = {**settings.VISUALSEARCH, "ENCODER": "visualsearch.encoders.clip.CLIPEncoder"}
    settings.VISUALSEARCH = base  # the tiny CLIP with its text tower: no bridge needed
    plain = [product.pk for product in search_by_text("a warm scarf", 8)]
    target = np.ones(get_encoder().dimensions, np.float32)
    constant_bridge(target, get_text_encoder().model_id, get_encoder().model_id).save(path)
    settings.VISUALSEARCH = {**base, "TEXT_BRIDGE": str(path)}
    assert [product.pk for product in search_by_text("a warm scarf", 8)] == plain


# --- checks: never a silently wrong ranking -------------------------------------------------


@pytest.mark.django_db
def test_missing_unreadable_or_foreign_files_are_e005_errors(offline_shop, tmp_path):
    base = offline_shop.VISUALSEARCH
    text_id, image_id = get_text_encoder().model_id, get_encoder().model_id

    offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": str(tmp_path / "absent.npz")}
    message = e005(offline_shop)
    assert "does not exist" in message and "manage.py visualsearch_bridge --out" in message

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": str(garbage)}
    assert "cannot be read" in e005(offline_shop)

    adapted = tmp_path / "projection.npz"  # a catalog projection, not a bridge
    Projection(
        w1=np.zeros((4, 2), np.float32), b1=np.zeros(2, np.float32),
        w2=np.zeros((2, 4), np.float32), b2=np.zeros(4, np.float32), meta={"label": "category"},
    ).save(adapted)  # fmt: skip
    offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": str(adapted)}
    assert "not a text bridge" in e005(offline_shop)

    target = np.ones(get_encoder().dimensions, np.float32)
    for text_model, image_model, wrong in [
        ("text:other-model:123", image_id, "text:other-model:123"),
        (text_id, "efficientnet-lite0-imagenet:v2", "efficientnet-lite0-imagenet:v2"),
    ]:
        path = constant_bridge(target, text_model, image_model).save(tmp_path / "b.npz")
        offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": str(path)}
        message = e005(offline_shop)
        assert "was trained for" in message and wrong in message
        assert text_id in message and image_id in message and "Retrain" in message
        with pytest.raises(ImproperlyConfigured, match="was trained for"):
            search_by_text("a warm scarf", 3)  # the query refuses too, never a wrong ranking


@pytest.mark.django_db
def test_bad_setting_values_are_e005_errors(offline_shop, tmp_path):
    base = offline_shop.VISUALSEARCH
    offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": 42}
    assert "must be the path of a file" in e005(offline_shop)
    offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": str(tmp_path / "b.npz"), "TEXT_MODEL": None}
    assert "set VISUALSEARCH['TEXT_MODEL'] too" in e005(offline_shop)
    offline_shop.VISUALSEARCH = {**base, "TEXT_BRIDGE": None}
    assert check_settings() == [] and get_bridge() is None
