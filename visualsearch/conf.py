"""The ``VISUALSEARCH`` settings dict, read lazily and reloaded on ``setting_changed``.

Modelled on DRF's ``api_settings``: ``visualsearch_settings.ENCODER_CLASS`` resolves the dotted
path on first access, and ``override_settings(VISUALSEARCH=...)`` in tests takes effect at once.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULTS: dict[str, Any] = {
    # "app_label.ModelName" of the host's image model, any model with an image field and a
    # foreign key to the product. Its vectors live in visualsearch's ImageEmbedding table,
    # or on its own rows when it includes visualsearch.models.EmbeddedImage.
    "IMAGE_MODEL": None,
    # Name of the ImageField on the image model, and of the FK from image to product.
    "IMAGE_FIELD": "image",
    "PRODUCT_FIELD": "product",
    # Dotted path of the encoder class and keyword arguments for it.
    "ENCODER": "visualsearch.encoders.clip.CLIPEncoder",
    "ENCODER_OPTIONS": {},
    # Where encoders keep derived files (the exported ONNX graph, for example).
    "CACHE_DIR": None,
    # HNSW build parameters (baked into the host's migration when it is generated).
    "HNSW_M": 16,
    "HNSW_EF_CONSTRUCTION": 64,
    # Per-query candidate list size; set with SET LOCAL inside the query's transaction.
    "HNSW_EF_SEARCH": 100,
    # Index and search half-precision copies of the vectors: the HNSW index is built on the
    # expression ``embedding::halfvec(n)`` (half the size; the column keeps full precision)
    # and queries order by the same expression. Baked into the host's migration like HNSW_M.
    "HNSW_HALFVEC": False,
    # Filtered queries that the planner expects to match at most this many images are
    # answered by an exact scan over those rows (through the filter's B-tree index) instead of
    # the HNSW index's iterative scan (0: always the index). See bench/query_bench.py.
    "EXACT_SEARCH_MAX_ROWS": 10_000,
    # hnsw.ef_search for a filter value walking its own partial HNSW index
    # (visualsearch_filter_indexes): a graph of a few thousand rows needs a longer candidate
    # list than the whole table's for the same recall, and costs little more to walk.
    "FILTER_INDEX_EF_SEARCH": 200,
    # Near-duplicate images (visualsearch.query.duplicates, manage.py visualsearch_duplicates,
    # the admin's "Duplicate images"): the candidate pairs are each image and those of its
    # DUPLICATE_NEIGHBOURS nearest images (HNSW index) whose vectors have a cosine
    # similarity of at least DUPLICATE_THRESHOLD.
    "DUPLICATE_THRESHOLD": 0.8,
    "DUPLICATE_NEIGHBOURS": 20,
    # A candidate pair is the same photo when, once aligned (crop, scale, mirror), no 4x4
    # block of their 32-pixel views differs by more than this mean colour difference (0..1):
    # the vectors alone rate colour variants of one shot as close as copies. None: no pixel
    # check (vectors only). These three were tuned by bench/duplicates.py (EfficientNet-Lite0).
    "DUPLICATE_PIXEL_DIFFERENCE": 0.028,
    # Images per encoder batch in workers and in the reindex command.
    "BATCH_SIZE": 32,
    # Largest accepted image, in pixels (decompression-bomb guard) and bytes.
    "MAX_IMAGE_PIXELS": 40_000_000,
    "MAX_IMAGE_BYTES": 20 * 1024 * 1024,
    # Most pixels a search photo (an anonymous upload) is decoded at, so that one request
    # costs bounded memory and CPU. JPEGs are decoded at a reduced scale and rarely reach
    # it; other formats above it are refused (WebP and AVIF at a third of it).
    "MAX_QUERY_PIXELS": 12_000_000,
    # Retries of transient failures (storage, database) in the embedding task.
    "TASK_MAX_RETRIES": 5,
    "TASK_RETRY_BACKOFF_MAX": 300,
    # Embedding tasks started for a row's content before the row is marked `failed` ("Gave
    # up after N attempts: …"), so that an image that kills the worker or makes the encoder
    # raise is not sent again forever (a batch a worker died on twice is split, so that it
    # fails alone). Other errors than transient ones are retried like them, at most
    # TASK_MAX_RETRIES times; transient errors give their attempt back.
    "TASK_MAX_ATTEMPTS": 5,
    # Rows left `pending` longer than this (seconds) are re-enqueued by the sweep.
    "SWEEP_PENDING_AFTER": 120,
    # A new encoder (or a retrained projection) is built in the background while the previous
    # one serves; it takes over once it has vectors for this share of the rows that have one
    # (`manage.py visualsearch_switch --cut-over --force` takes over earlier).
    "SWITCH_COVERAGE": 1.0,
    # Load the encoder when a worker process starts, so the first upload is not slow.
    "WARM_UP_WORKERS": True,
    # Celery queue for embedding tasks (None: the default queue).
    "QUEUE": None,
    # Where query photos (and words, with CLIP) are encoded: "local" (in the web process, by
    # the serving encoder) or "remote" (the KServe v2 endpoint of REMOTE_ENCODER, which must
    # serve the same model: its model id is checked; a down endpoint answers 503).
    "QUERY_ENCODER": "local",
    # The KServe v2 / Open Inference Protocol endpoint of QUERY_ENCODER "remote", keyword
    # arguments of visualsearch.encoders.remote.KServeV2Encoder: {"url": "http://gpu-1:8080",
    # "model": "visualsearch", "timeout": 10.0, "connect_timeout": 2.0, "retries": 2,
    # "backoff": 0.2, "dimensions": None, "batch_size": 32} (only "url" is required). Workers
    # encode remotely by naming that class as ENCODER with these as ENCODER_OPTIONS.
    "REMOTE_ENCODER": {},
    # Django cache alias for rendered widgets; seconds a similar-products widget is cached
    # (0: never). Entries are dropped whenever embeddings or products change.
    "CACHE_ALIAS": "default",
    "WIDGET_CACHE_TIMEOUT": 3600,
    # Product attributes shown in widgets and API results (None leaves one out).
    "PRODUCT_NAME_FIELD": "name",
    "PRODUCT_PRICE_FIELD": "price",
    # Dotted paths of callables ``(product, request) -> value`` that replace the attributes
    # above and the defaults for the link and the picture (get_absolute_url, the first
    # image): for shops that compute them per request, such as django-oscar's prices.
    # ``request`` is None where there is none (a Celery task, a management command).
    "PRODUCT_NAME": None,
    "PRODUCT_PRICE": None,
    "PRODUCT_URL": None,
    "PRODUCT_THUMBNAIL": None,
    # Dotted path of a callable ``(request) -> QuerySet`` of the products that may be shown
    # and looked up (widgets, API, recommendations): hide unpublished ones, prefetch what the
    # hooks above read (None: the product model's default manager).
    "PRODUCT_QUERYSET": None,
    # Product fields copied onto the image rows, {image field: product field}: filters on
    # them read the image table alone (visualsearch.storage.copies keeps the copies in step).
    "IMAGE_FILTER_FIELDS": {},
    # Query parameters accepted as filters by the API: {param: product lookup}, for example
    # {"category": "category__slug", "in_stock": "in_stock", "max_price": "price__lte"}.
    "FILTERS": {},
    # Relevance cut-off (visualsearch.query.cutoff): end each result list of the API and the
    # similar-products widget where its scores fall away from its top hit, instead of always
    # showing `limit` results. None: off. A ratio such as 0.94 (keep what scores at least
    # 0.94 x the top hit's similarity; "on" means that, as measured by bench/cutoff.py),
    # "rule:value" ("ratio:0.94", "gap:2" cut at the largest drop if it is 2+ standard
    # deviations of the list's scores, "stddev:1.5" keep what is within 1.5 standard
    # deviations of the top), or a dict {"rule": …, "value": …, "min_results": …}. Every rule
    # keeps at least min_results (default 3). The API's `cutoff` parameter and the tag's
    # `cutoff=` override it per request.
    "RELEVANCE_CUTOFF": None,
    # REST API (visualsearch.api): results per request, permissions and throttling.
    "API_DEFAULT_LIMIT": 12,
    "API_MAX_LIMIT": 50,
    "API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "API_THROTTLE_CLASSES": ["visualsearch.api.throttling.SearchRateThrottle"],
    # Requests per client (user, else address) for the throttle above, DRF's "N/period" form.
    "API_THROTTLE_RATE": "120/minute",
    # "Recommended for you" (visualsearch.query.recommend). Products per widget or API answer.
    "RECOMMEND_SIZE": 8,
    # Share of them that are exploration picks, 0..1 (tuned with bench/rounds_to_target.py),
    # and how those are chosen: "diverse" (typical products of groups the shopper has not
    # seen yet) or "random".
    "RECOMMEND_EXPLORATION": 0.2,
    "RECOMMEND_EXPLORATION_STRATEGY": "diverse",
    # How much the near picks are spread apart (maximal marginal relevance): 0 takes the
    # nearest products as they come, 1 favours difference from each other over nearness.
    "RECOMMEND_DIVERSITY": 0.2,
    # Viewed products the session keeps; their mean vector is the shopper's preference,
    # counting only those within this cosine similarity of the latest view (0: all of them).
    "RECOMMEND_HISTORY": 10,
    "RECOMMEND_FOCUS": 0.7,
    # Recommended products the session remembers so as not to show them again (0: none).
    "RECOMMEND_SHOWN_MEMORY": 300,
    # The products most similar to the latest viewed one that recommendations leave out: the
    # similar-products widget beside them (8 on the product page) shows those (0: none).
    "RECOMMEND_SKIP_SIMILAR": 8,
    # With text search on (TEXT_MODEL), the share of the near picks' similarity that comes
    # from the product-text vectors (names, descriptions); the rest from the image vectors.
    # 0: images only. Ignored while TEXT_MODEL is None.
    "RECOMMEND_TEXT_WEIGHT": 0.5,
    # Text search over product names and descriptions (None: off). "app_label.ModelName" of
    # the host's product-text model (it includes EmbeddedText, one row per product).
    "TEXT_MODEL": None,
    # Product fields (or ``__`` paths such as "category__name") read by text search. The
    # first is weighted highest in full-text ranking.
    "TEXT_FIELDS": ["name", "description"],
    # Dotted path of the text encoder class and keyword arguments for it.
    "TEXT_ENCODER": "visualsearch.encoders.text.SentenceTransformerTextEncoder",
    "TEXT_ENCODER_OPTIONS": {},
    # Postgres text search configuration (stemming, stop words) of the full-text ranking.
    "TEXT_SEARCH_CONFIG": "english",
    # Reciprocal rank fusion: score = sum of 1 / (RRF_K + rank) over the rankings fused,
    # each ranking cut after RRF_CANDIDATES products.
    "RRF_K": 60,
    "RRF_CANDIDATES": 100,
    # Path of a learned text → image bridge (``manage.py visualsearch_bridge``; None: off).
    # With an image encoder that has no text tower, text search then also ranks the photos
    # by the bridged vector of the description (fused like a photo's ranking).
    "TEXT_BRIDGE": None,
    # Fused product vectors (needs TEXT_MODEL): a product's mean image vector and the text
    # encoder's vectors of some of its TEXT_FIELDS side by side, so that their cosine
    # similarity is the weighted mean of the parts' similarities. {"image": weight, field
    # path: weight, ...}, for example {"image": 0.5, "name": 0.5}; None: off (images only).
    # Kept up to date by the workers whenever a product's images or words change.
    "FUSION": None,
    # Surfaces that rank by the fused vectors while FUSION is set (the others, and products
    # whose fused vector is not ready yet, rank by the image vectors): "similar" (similar
    # products), "photo" (search by image; the photo's text part is borrowed from its nearest
    # products) and "recommend" (recommended for you).
    "FUSED_SURFACES": ["similar", "photo", "recommend"],
    # Read replicas (visualsearch.storage.routing.ReplicaRouter in DATABASE_ROUTERS): database
    # aliases that serve the vector reads; list the primary ("default") too to spread reads
    # over it. []: every query on the primary.
    "READ_DATABASES": [],
    # A replica further behind the primary than this (seconds) is skipped until it catches up.
    "REPLICA_MAX_LAG_SECONDS": 5.0,
    # Seconds a replica's health and lag check is reused per process (one check, not one a query).
    "REPLICA_CHECK_SECONDS": 2.0,
    # Seconds a client (cookie, visualsearch.web.pinning) or thread that wrote reads from the
    # primary afterwards: at least REPLICA_MAX_LAG_SECONDS + REPLICA_CHECK_SECONDS.
    "PIN_PRIMARY_SECONDS": 10.0,
}

# Settings that hold dotted paths, resolved on access under the name with "_CLASS" appended.
IMPORT_STRINGS = {
    "ENCODER",
    "TEXT_ENCODER",
    "PRODUCT_NAME",
    "PRODUCT_PRICE",
    "PRODUCT_URL",
    "PRODUCT_THUMBNAIL",
    "PRODUCT_QUERYSET",
}


class VisualSearchSettings:
    """Attribute access to ``settings.VISUALSEARCH`` with defaults, validated on access."""

    def __init__(self) -> None:
        self._cached: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, "VISUALSEARCH", {})
        if not isinstance(value, dict):
            raise ImproperlyConfigured("settings.VISUALSEARCH must be a dict.")
        unknown = set(value) - set(DEFAULTS)
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown VISUALSEARCH keys: {sorted(unknown)}. Valid keys: {sorted(DEFAULTS)}."
            )
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._cached:
            return self._cached[name]
        if name.endswith("_CLASS") and name[: -len("_CLASS")] in IMPORT_STRINGS:
            key = name[: -len("_CLASS")]
            value = self._import(key, getattr(self, key))
        elif name in DEFAULTS:
            value = self.user_settings.get(name, DEFAULTS[name])
        else:
            raise AttributeError(f"Invalid visualsearch setting: {name!r}")
        self._cached[name] = value
        return value

    def _import(self, key: str, dotted_path: Any) -> Any:
        if dotted_path is None and key not in ("ENCODER", "TEXT_ENCODER"):
            return None  # an optional hook left unset
        if not isinstance(dotted_path, str):
            raise ImproperlyConfigured(
                f"VISUALSEARCH[{key!r}] must be a dotted import path string, got {dotted_path!r}."
            )
        try:
            return import_string(dotted_path)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"VISUALSEARCH[{key!r}] = {dotted_path!r} could not be imported: {exc}"
            ) from exc

    def reload(self) -> None:
        """Forget cached values (called when ``settings.VISUALSEARCH`` changes)."""
        self._cached.clear()


visualsearch_settings = VisualSearchSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "VISUALSEARCH":
        visualsearch_settings.reload()


setting_changed.connect(_reload, dispatch_uid="visualsearch.conf.reload")
