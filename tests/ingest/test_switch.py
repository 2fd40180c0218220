"""The model lifecycle: encoder switches without an empty result, retrains from stored
features, one projection per batch, encoding outside the row locks, one bad row alone."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from django.db import connection

from shop.catalog.models import ProductImage
from tests import services
from tests.conftest import BASE_DIR, database_url, make_image_bytes
from visualsearch.encoders import get_encoder
from visualsearch.encoders.projection import Projection
from visualsearch.ingest import switch
from visualsearch.ingest.pipeline import embed_images
from visualsearch.ingest.tasks import enqueue_build
from visualsearch.models import EmbeddingStatus, EncodedVector, EncoderGeneration
from visualsearch.query.search import search_by_image, similar_products

COLOURS = ["red", "blue", "green", "orange", "purple", "black", "yellow", "cyan"]


def colour_settings(settings, **options) -> None:
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "tests.encoders.ColourEncoder",
        "ENCODER_OPTIONS": options,
    }


def adapted_settings(settings, projection, base="tests.encoders.ColourEncoder", **options):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.adapted.AdaptedEncoder",
        "ENCODER_OPTIONS": {
            "base": base,
            "base_options": options,
            "projection": str(projection),
        },
    }


def random_projection(path, seed: int, hidden: int = 16) -> Projection:
    rng = np.random.default_rng(seed)
    projection = Projection(
        w1=rng.standard_normal((32, hidden)).astype(np.float32),
        b1=np.zeros(hidden, np.float32),
        w2=rng.standard_normal((hidden, 32)).astype(np.float32),
        b2=np.zeros(32, np.float32),
    )
    projection.save(path)
    return projection


@pytest.fixture
def products(make_product):
    return [make_product(color=c, shape=s) for c in COLOURS for s in ("square", "circle")]


def models_in_use() -> set:
    return set(ProductImage.objects.values_list("embedding_model", flat=True))


@pytest.mark.django_db
def test_a_new_encoder_builds_while_the_old_one_keeps_serving(
    products, settings, django_capture_on_commit_callbacks
):
    colour_settings(settings, seed=1)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    first = get_encoder().model_id
    colour_settings(settings, seed=2)  # the shop configures another encoder
    photo = make_image_bytes("red", "square")
    # Before anything is re-embedded, queries still find the first encoder's vectors.
    assert len(similar_products(products[0], k=5)) == 5
    assert search_by_image(photo, k=3)[0].pk == products[0].pk
    started = switch.sync()
    assert started.model_id == "tests:colour:2" and models_in_use() == {first}
    pks = list(ProductImage.objects.order_by("pk").values_list("pk", flat=True))
    switch.build(pks[:5], get_encoder(), started)
    state = switch.progress()
    assert (state.serving, state.covered, state.total) == (first, 5, 16)
    assert switch.cut_over() is None  # SWITCH_COVERAGE is 100 %
    assert len(similar_products(products[0], k=5)) == 5
    switch.build(pks[5:], get_encoder(), started)
    with django_capture_on_commit_callbacks(execute=True):
        assert switch.cut_over() == []
    assert models_in_use() == {"tests:colour:2"}
    assert EncoderGeneration.objects.get(model_id=first).state == "retired"
    assert not EncodedVector.objects.filter(model_id="tests:colour:2").exists()  # cleaned up
    assert search_by_image(photo, k=3)[0].pk == products[0].pk
    # What the switch copied is what the new encoder makes of each file.
    row = ProductImage.objects.order_by("pk").first()
    copied = np.asarray(row.embedding)
    embed_images([row.pk], force=True)
    assert np.allclose(np.asarray(ProductImage.objects.get(pk=row.pk).embedding), copied, atol=1e-5)


@pytest.mark.django_db
def test_images_saved_during_a_switch_are_embedded_for_both(products, settings, make_product):
    colour_settings(settings, seed=1)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    colour_settings(settings, seed=2)
    started = switch.sync()
    new = make_product(color="magenta").images.get()
    embed_images([new.pk])
    row = ProductImage.objects.get(pk=new.pk)
    assert (row.embedding_status, row.embedding_model) == ("ready", "tests:colour:1")
    assert EncodedVector.objects.filter(model_id=started.model_id, digest=row.embedding_hash)


@pytest.mark.django_db
def test_forced_cut_over_leaves_the_rows_it_lacks_pending(products, settings):
    colour_settings(settings, seed=1)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    colour_settings(settings, seed=2)
    started = switch.sync()
    pks = list(ProductImage.objects.order_by("pk").values_list("pk", flat=True))
    switch.build(pks[:10], get_encoder(), started)
    assert len(switch.cut_over(force=True)) == 6
    statuses = dict(ProductImage.objects.values_list("pk", "embedding_status"))
    assert [statuses[pk] for pk in pks[:10]] == ["ready"] * 10
    assert [statuses[pk] for pk in pks[10:]] == ["pending"] * 6


@pytest.mark.django_db
def test_a_switch_to_another_vector_size_is_refused_and_keeps_serving(products, settings):
    embed_images(ProductImage.objects.values_list("pk", flat=True))  # the tiny CLIP, 32-d
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "tests.encoders.WideEncoder",
        "ENCODER_OPTIONS": {},
    }
    assert switch.sync() is None
    assert "visualsearch_reindex --resize" in switch.progress().note
    assert len(similar_products(products[0], k=5)) == 5  # still the tiny CLIP's vectors


@pytest.mark.django_db
def test_a_retrain_is_applied_to_stored_features_without_encoding(products, settings, tmp_path):
    path = tmp_path / "projection.npz"
    random_projection(path, seed=1)
    adapted_settings(settings, path)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    first = get_encoder().model_id
    second = random_projection(path, seed=2)  # the retrain writes the file in place
    encoder = get_encoder()
    assert encoder.model_id != first
    calls = encoder.base.calls
    started = switch.sync()
    assert started is not None and switch.progress().covered == 16  # all derived at once
    assert encoder.base.calls == calls  # nothing was decoded or encoded
    assert len(similar_products(products[0], k=5)) == 5  # the first projection still serves
    assert switch.cut_over() == []
    assert models_in_use() == {encoder.model_id}
    # Derived vectors are those encoding the file with the new projection gives.
    row = ProductImage.objects.order_by("pk").first()
    features = EncodedVector.objects.get(model_id="tests:colour:0", digest=row.embedding_hash)
    expected = second.apply(np.asarray(features.vector)[None, :])[0]
    assert np.allclose(np.asarray(row.embedding), expected, atol=1e-5)


@pytest.mark.django_db
def test_the_serving_projection_is_kept_when_the_file_is_retrained(products, settings, tmp_path):
    path = tmp_path / "projection.npz"
    random_projection(path, seed=1)
    adapted_settings(settings, path)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    before = search_by_image(make_image_bytes("blue", "circle"), k=4)
    random_projection(path, seed=2)
    switch.sync()  # the new projection builds; the copy of the first serves
    serving = EncoderGeneration.objects.get(state="serving")
    assert serving.options["projection"] != str(path)
    after = search_by_image(make_image_bytes("blue", "circle"), k=4)
    assert [p.pk for p in after] == [p.pk for p in before]


@pytest.mark.django_db
def test_a_batch_writes_the_model_id_of_the_projection_it_encoded_with(
    products, settings, tmp_path
):
    path, replacement = tmp_path / "projection.npz", tmp_path / "retrained.npz"
    first = random_projection(path, seed=1)
    random_projection(replacement, seed=2)
    adapted_settings(
        settings,
        path,
        base="tests.encoders.SwappingEncoder",
        watched=str(path),
        replacement=str(replacement),
    )
    EncoderGeneration.objects.all().delete()
    pk = products[0].images.get().pk
    embed_images([pk])  # the file is replaced while the batch encodes
    row = ProductImage.objects.get(pk=pk)
    assert row.embedding_model.endswith(first.digest[:12])
    base = get_encoder().base
    features = base.encode_images([_decoded(row)])
    assert np.allclose(np.asarray(row.embedding), first.apply(features)[0], atol=1e-5)


def _decoded(row):
    from visualsearch.ingest.images import decode_stored, read_stored

    return decode_stored(read_stored(row.image))


@pytest.mark.django_db(transaction=True)
def test_saving_a_row_never_waits_for_its_batch_to_encode(make_product, settings):
    colour_settings(settings, seed=1)
    known = make_product(color="red")
    embed_images([known.images.get().pk])
    # Same photo as a ready row (its vector is reused, written first) and one to encode.
    twin = make_product(color="red").images.get()
    slow = make_product(color="blue").images.get()
    colour_settings(settings, seed=1, delay=3.0)
    EncoderGeneration.objects.all().delete()  # keep the first (same model id) serving
    done = {}

    def run_batch():
        embed_images([twin.pk, slow.pk])
        done["batch"] = time.monotonic()
        connection.close()

    worker = threading.Thread(target=run_batch)
    worker.start()
    time.sleep(1.0)  # the batch is encoding now
    ProductImage.objects.filter(pk=twin.pk).update(position=7)  # another save of that row
    done["save"] = time.monotonic()
    worker.join(30)
    assert done["save"] < done["batch"] - 1.0
    assert ProductImage.objects.get(pk=twin.pk).position == 7


@pytest.mark.django_db
def test_one_nan_vector_fails_its_row_alone(make_product, settings):
    from visualsearch.ingest.tasks import embed_images_task

    colour_settings(settings, seed=1, poison=77)
    good = [make_product(color=c).images.get().pk for c in ("red", "blue")]
    bad = make_product(image_bytes=make_image_bytes("green", size=(77, 77))).images.get().pk
    embed_images_task.apply(args=("catalog", "productimage", [*good, bad]))
    statuses = dict(ProductImage.objects.values_list("pk", "embedding_status"))
    assert [statuses[pk] for pk in good] == ["ready", "ready"]
    row = ProductImage.objects.get(pk=bad)
    assert row.embedding_status == "failed" and "NaN" in row.embedding_error


@pytest.mark.django_db
def test_an_encoder_error_on_one_image_fails_that_image_alone(make_product, settings):
    colour_settings(settings, seed=1, poison=77, poison_mode="raise")
    good = [make_product(color=c).images.get().pk for c in ("red", "blue")]
    bad = make_product(image_bytes=make_image_bytes("green", size=(77, 77))).images.get().pk
    result = embed_images([*good, bad])
    assert sorted(result.ready) == sorted(good) and list(result.failed) == [bad]
    row = ProductImage.objects.get(pk=bad)
    assert row.embedding_status == EmbeddingStatus.FAILED
    assert "cannot encode a 77-pixel-wide image" in row.embedding_error


@pytest.fixture
def adapted_worker(transactional_db, broker, tmp_path, monkeypatch):
    """A real worker whose encoder is the adapted one reading ``tmp_path/projection.npz``."""
    path = tmp_path / "projection.npz"
    random_projection(path, seed=1)
    options = {"base": "tests.encoders.ColourEncoder", "projection": str(path)}
    adapted = "visualsearch.encoders.adapted.AdaptedEncoder"
    encoder = {"ENCODER": adapted, "ENCODER_OPTIONS": options}
    monkeypatch.setenv("VISUALSEARCH_TEST_ENCODER", json.dumps(encoder))
    process = services.start_worker(
        "shop", "tests.settings", database_url(), tmp_path / "worker.log",
        cwd=BASE_DIR, name="switch", timeout=60,
    )  # fmt: skip
    yield path
    services.stop_worker(process)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_builds_a_retrain_while_queries_keep_answering(
    adapted_worker, make_product, settings
):
    adapted_settings(settings, adapted_worker)
    products = [make_product(color=c, shape=s) for c in COLOURS for s in ("square", "circle")]
    deadline = time.monotonic() + 60  # the worker embeds the saved images
    while ProductImage.objects.exclude(embedding_status="ready").exists():
        assert time.monotonic() < deadline, "the worker did not embed the catalog"
        time.sleep(0.2)
    first = get_encoder().model_id
    EncodedVector.objects.filter(digest__in=list(  # half the features were never kept
        ProductImage.objects.order_by("pk").values_list("embedding_hash", flat=True)[:8]
    )).delete()  # fmt: skip
    random_projection(adapted_worker, seed=2)
    started = switch.sync()  # derives 8
    assert started is not None and enqueue_build(started) == 8  # the worker builds 8
    empty, asked = 0, 0
    deadline = time.monotonic() + 90
    while switch.building() is not None and time.monotonic() < deadline:
        asked += 1
        empty += not similar_products(products[asked % len(products)], k=4)
        time.sleep(0.05)
    assert switch.building() is None, "the worker did not finish the build"
    assert asked > 0 and empty == 0
    assert models_in_use() == {started.model_id} != {first}
    assert len(similar_products(products[0], k=4)) == 4


@pytest.mark.django_db
def test_the_admin_overview_shows_both_encoders_progress_and_eta(products, settings, admin_client):
    from django.urls import reverse

    colour_settings(settings, seed=1)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    colour_settings(settings, seed=2)
    started = switch.sync()
    pks = list(ProductImage.objects.order_by("pk").values_list("pk", flat=True))
    switch.build(pks[:4], get_encoder(), started)
    html = admin_client.get(reverse("admin:visualsearch_overview")).content.decode()
    assert "Encoder switch" in html
    assert "<code>tests:colour:1</code>" in html and "<code>tests:colour:2</code>" in html
    assert "4 of 16 images" in html and "about " in html  # an ETA from the rate so far


@pytest.mark.django_db
def test_switching_back_to_an_earlier_encoder_starts_its_build_afresh(products, settings):
    colour_settings(settings, seed=1)
    embed_images(ProductImage.objects.values_list("pk", flat=True))
    colour_settings(settings, seed=2)
    first_build = switch.sync()
    EncoderGeneration.objects.filter(pk=first_build.pk).update(
        created_at=first_build.created_at - timedelta(days=1), failures={"abc": "broken"}
    )
    colour_settings(settings, seed=3)  # configured anew before seed 2 finished: retired
    assert switch.sync().model_id == "tests:colour:3"
    colour_settings(settings, seed=2)  # and back again
    again = switch.sync()
    assert again.pk == first_build.pk and again.failures == {}
    assert again.created_at > first_build.created_at  # the grace and the ETA count from now
