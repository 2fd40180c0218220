"""Settings of the Oscar example: django-oscar 4.2's documented project settings, unmodified
catalogue apps (no forks), plus the visualsearch lines between the glue markers.

From the environment: ``DATABASE_URL`` (otherwise an embedded PostgreSQL 18 + pgvector under
the repository's git-ignored ``.cache/pgdata-oscar``, database ``oscar_example``),
``CELERY_BROKER_URL`` / ``REDIS_URL``, ``CACHE_URL``, ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``
and ``MEDIA_ROOT``.
"""

import os
from pathlib import Path

from oscar.defaults import *  # noqa: F403  (Oscar's documented starting point)

from visualsearch.contrib.embedded_postgres import database_from_url

BASE_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = BASE_DIR.parent.parent

DEBUG = os.environ.get("DJANGO_DEBUG", "1").lower() in {"1", "true", "yes", "on"}
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-insecure-key")
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "django.contrib.flatpages",
    "oscar.config.Shop",
    "oscar.apps.analytics.apps.AnalyticsConfig",
    "oscar.apps.checkout.apps.CheckoutConfig",
    "oscar.apps.address.apps.AddressConfig",
    "oscar.apps.shipping.apps.ShippingConfig",
    "oscar.apps.catalogue.apps.CatalogueConfig",
    "oscar.apps.catalogue.reviews.apps.CatalogueReviewsConfig",
    "oscar.apps.communication.apps.CommunicationConfig",
    "oscar.apps.partner.apps.PartnerConfig",
    "oscar.apps.basket.apps.BasketConfig",
    "oscar.apps.payment.apps.PaymentConfig",
    "oscar.apps.offer.apps.OfferConfig",
    "oscar.apps.order.apps.OrderConfig",
    "oscar.apps.customer.apps.CustomerConfig",
    "oscar.apps.search.apps.SearchConfig",
    "oscar.apps.voucher.apps.VoucherConfig",
    "oscar.apps.wishlists.apps.WishlistsConfig",
    "oscar.apps.dashboard.apps.DashboardConfig",
    "oscar.apps.dashboard.reports.apps.ReportsDashboardConfig",
    "oscar.apps.dashboard.users.apps.UsersDashboardConfig",
    "oscar.apps.dashboard.orders.apps.OrdersDashboardConfig",
    "oscar.apps.dashboard.catalogue.apps.CatalogueDashboardConfig",
    "oscar.apps.dashboard.offers.apps.OffersDashboardConfig",
    "oscar.apps.dashboard.partners.apps.PartnersDashboardConfig",
    "oscar.apps.dashboard.pages.apps.PagesDashboardConfig",
    "oscar.apps.dashboard.ranges.apps.RangesDashboardConfig",
    "oscar.apps.dashboard.reviews.apps.ReviewsDashboardConfig",
    "oscar.apps.dashboard.vouchers.apps.VouchersDashboardConfig",
    "oscar.apps.dashboard.communications.apps.CommunicationsDashboardConfig",
    "oscar.apps.dashboard.shipping.apps.ShippingDashboardConfig",
    # 3rd-party apps that oscar depends on
    "widget_tweaks",
    "haystack",
    "treebeard",
    "django_tables2",
    # visualsearch glue: begin
    "django.contrib.postgres",
    "rest_framework",
    "visualsearch",
    # visualsearch glue: end
]

SITE_ID = 1

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "oscar.apps.basket.middleware.BasketMiddleware",
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
]

ROOT_URLCONF = "oscar_example.urls"
WSGI_APPLICATION = "oscar_example.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The shop's own overrides (oscar/catalogue/detail.html) come before Oscar's.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.debug",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.template.context_processors.i18n",
                "django.contrib.messages.context_processors.messages",
                "oscar.apps.search.context_processors.search_form",
                "oscar.apps.checkout.context_processors.checkout",
                "oscar.apps.communication.notifications.context_processors.notifications",
                "oscar.core.context_processors.metadata",
            ],
        },
    },
]

AUTHENTICATION_BACKENDS = (
    "oscar.apps.customer.auth_backends.EmailBackend",
    "django.contrib.auth.backends.ModelBackend",
)

HAYSTACK_CONNECTIONS = {"default": {"ENGINE": "haystack.backends.simple_backend.SimpleEngine"}}

# Neither sorl-thumbnail nor easy-thumbnails is installed here: Oscar's templates get the
# original image files (oscar_example.thumbnails.OriginalImage).
OSCAR_THUMBNAILER = "oscar_example.thumbnails.OriginalImage"
OSCAR_THUMBNAIL_DEBUG = False


if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": database_from_url(os.environ["DATABASE_URL"])}
else:
    # The development database (not glue: a shop has its own Postgres, with pgvector).
    from visualsearch.contrib.embedded_postgres import embedded_database

    DATABASES = {"default": embedded_database(REPO_DIR / ".cache/pgdata-oscar", "oscar_example")}
DATABASES["default"]["ATOMIC_REQUESTS"] = True  # Oscar's recommendation

DEFAULT_AUTO_FIELD = "django.db.models.AutoField"  # what Oscar's migrations use

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "static"
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", BASE_DIR / "media"))

# Redis databases 2 and 3 by default, so that the demo shop's worker (0 and 1) on the same
# machine never receives this project's tasks.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/2")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("CACHE_URL", "redis://127.0.0.1:6379/3"),
        "KEY_PREFIX": "oscar-example",
    }
}

# Celery, configured as any Celery + Django project does (oscar_example/celery.py).
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
# Saving a product must not hang when Redis is down: fail fast, the sweep enqueues it later.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5}
CELERY_BEAT_SCHEDULE = {
    # visualsearch glue: begin
    "visualsearch-sweep": {"task": "visualsearch.sweep_pending", "schedule": 300.0},
    # visualsearch glue: end
}

# visualsearch glue: begin
VISUALSEARCH = {
    "IMAGE_MODEL": "catalogue.ProductImage",
    "IMAGE_FIELD": "original",
    "PRODUCT_NAME_FIELD": "title",
    "PRODUCT_PRICE": "visualsearch.contrib.oscar.product_price",
    "PRODUCT_QUERYSET": "visualsearch.contrib.oscar.product_queryset",
    "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
}
# visualsearch glue: end
