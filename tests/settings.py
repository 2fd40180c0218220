"""Test settings: the demo shop's, with a tiny CLIP encoder, a private Redis and temp media."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DJANGO_DEBUG", "1")  # the shop's development settings (DEBUG off by default)

from shop.settings import *  # noqa: E402,F403
from shop.settings import VISUALSEARCH  # noqa: E402
from tests.services import session_broker_url, session_media_root, tiny_clip_dir  # noqa: E402

CELERY_BROKER_URL = session_broker_url()
CACHES["default"]["LOCATION"] = CELERY_BROKER_URL.rsplit("/", 1)[0] + "/1"  # noqa: F405
MEDIA_ROOT = session_media_root()
# The live server of the browser tests serves uploads itself, whatever DJANGO_DEBUG says.
SERVE_MEDIA = True
TINY_CLIP_DIR = tiny_clip_dir()

VISUALSEARCH = {
    **VISUALSEARCH,
    "ENCODER": "visualsearch.encoders.clip.CLIPEncoder",
    "ENCODER_OPTIONS": {"model": str(TINY_CLIP_DIR), "threads": 1},
    "CACHE_DIR": str(BASE_DIR / ".cache" / "visualsearch"),  # noqa: F405
    # Text search is off for the suite at large (its tests turn it on: test_text_search.py),
    # so that other tests see only their own queries and tasks.
    "TEXT_MODEL": None,
    "TEXT_BRIDGE": None,  # whatever VISUALSEARCH_TEXT_BRIDGE says (test_bridge.py sets its own)
    "FUSION": None,  # fused vectors need text search: tests/ingest/test_fusion.py
}
# A worker started by a test may be given another encoder: {"ENCODER": …, "ENCODER_OPTIONS": …}.
if os.environ.get("VISUALSEARCH_TEST_ENCODER"):
    import json

    VISUALSEARCH.update(json.loads(os.environ["VISUALSEARCH_TEST_ENCODER"]))
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A separate name lets two test runs share one embedded server.
DATABASES["default"]["TEST"] = {"NAME": os.environ.get("VISUALSEARCH_TEST_DB", "test_visualsearch")}  # noqa: F405
