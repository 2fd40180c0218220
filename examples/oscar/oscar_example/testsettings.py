"""Settings for the example's tests (``pytest.ini``) and the worker processes they start.

The example's settings, with the main suite's real services (``tests/services.py`` of this
repository): a private ``redis-server`` as broker and cache, the tiny random CLIP as encoder
and a throw-away media folder, all handed to child processes through the environment.
"""

import os
import sys

from oscar_example.settings import *  # noqa: F403
from oscar_example.settings import DATABASES, REPO_DIR, VISUALSEARCH

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
if str(REPO_DIR) not in sys.path:
    sys.path.append(str(REPO_DIR))

from tests.services import session_broker_url, session_media_root, tiny_clip_dir  # noqa: E402

CELERY_BROKER_URL = session_broker_url()
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CELERY_BROKER_URL.rsplit("/", 1)[0] + "/1",
        "KEY_PREFIX": "oscar-example-tests",
    }
}
MEDIA_ROOT = session_media_root()
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
VISUALSEARCH = {
    **VISUALSEARCH,
    "ENCODER": "visualsearch.encoders.clip.CLIPEncoder",
    "ENCODER_OPTIONS": {"model": str(tiny_clip_dir()), "threads": 1},
    "CACHE_DIR": str(REPO_DIR / ".cache" / "visualsearch"),
}
# Its own test database, so that it can share an embedded server with other test runs.
DATABASES["default"]["TEST"] = {
    "NAME": os.environ.get("OSCAR_EXAMPLE_TEST_DB", "test_oscar_example")
}
