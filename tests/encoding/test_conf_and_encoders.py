"""Settings object, encoder loading, and the promise that Django start-up never imports torch."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from PIL import Image

from tests.conftest import SHARED_DATA, make_image_bytes
from visualsearch.conf import visualsearch_settings
from visualsearch.encoders import TextEncodingNotSupported, get_encoder
from visualsearch.encoders.clip import CLIPEncoder
from visualsearch.encoders.efficientnet import EfficientNetLite0Encoder

BASE_DIR = Path(__file__).resolve().parents[2]


def test_override_settings_takes_effect(settings):
    assert visualsearch_settings.BATCH_SIZE == 32
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "BATCH_SIZE": 7}
    assert visualsearch_settings.BATCH_SIZE == 7


def test_bad_encoder_path_names_the_key(settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "ENCODER": "no.such.Encoder"}
    with pytest.raises(ImproperlyConfigured, match=r"VISUALSEARCH\['ENCODER'\]"):
        get_encoder()


def test_encoder_must_be_an_encoder(settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "ENCODER": "decimal.Decimal"}
    with pytest.raises(ImproperlyConfigured, match="subclass"):
        get_encoder()


def test_unknown_setting_key_is_rejected(settings):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "ENCODR": "x"}
    with pytest.raises(ImproperlyConfigured, match="ENCODR"):
        visualsearch_settings.BATCH_SIZE  # noqa: B018


def test_unknown_hub_model_needs_dimensions():
    with pytest.raises(ImproperlyConfigured, match="dimensions"):
        CLIPEncoder("some-org/unknown-clip")
    assert CLIPEncoder("some-org/unknown-clip", dimensions=640).dimensions == 640
    assert CLIPEncoder().dimensions == 512  # clip-ViT-B-32, known without loading
    assert CLIPEncoder().model_id == "clip:clip-ViT-B-32"


def test_tiny_clip_loads_from_a_local_directory_through_the_real_path(settings):
    encoder = CLIPEncoder(str(settings.TINY_CLIP_DIR))
    assert encoder.dimensions == 32
    images = [Image.open(io.BytesIO(make_image_bytes(c))) for c in ("red", "blue", "red")]
    vectors = encoder.encode_images(images)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1])
    texts = encoder.encode_texts(["a red shirt", "blue shoes"])
    assert texts.shape == (2, 32)
    assert encoder.encode_images([]).shape == (0, 32)


def test_efficientnet_encodes_real_photos_offline(tmp_path):
    encoder = EfficientNetLite0Encoder(cache_dir=str(tmp_path), batch_size=2)
    if SHARED_DATA.exists():
        files = sorted((SHARED_DATA / "images").glob("*.jpg"))[:3]
        images = [Image.open(f) for f in files]
    else:
        images = [Image.open(io.BytesIO(make_image_bytes(c, size=(224, 160)))) for c in "rgb"]
    vectors = encoder.encode_images(images)
    assert vectors.shape == (3, 1280) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert encoder.onnx_path.exists()  # exported once, reused by the next process
    again = EfficientNetLite0Encoder(cache_dir=str(tmp_path)).encode_images(images[:1])
    assert np.allclose(again[0], vectors[0], atol=1e-5)
    with pytest.raises(TextEncodingNotSupported):
        encoder.encode_texts(["red shirt"])


def test_django_start_and_check_do_not_import_torch():
    code = (
        "import sys, django; django.setup();"
        "from django.core.management import call_command; call_command('check');"
        "import visualsearch.query, visualsearch.ingest.tasks, visualsearch.admin;"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'onnxruntime', 'transformers')"
        " if m in sys.modules]; print('HEAVY', heavy); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "shop.settings"}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout


def test_torchvision_stays_out_of_the_environment():
    # A CUDA torchvision from PyPI beside CPU torch breaks CLIP in transformers.
    import importlib.util

    assert importlib.util.find_spec("torchvision") is None
