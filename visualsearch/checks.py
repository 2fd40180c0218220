"""System checks (``manage.py check``; database checks also run before ``migrate``).

| id                 | meaning                                                          |
| ------------------ | ---------------------------------------------------------------- |
| visualsearch.E001  | the database is not PostgreSQL                                   |
| visualsearch.E002  | the pgvector extension is not available on the server            |
| visualsearch.E003  | pgvector is older than 0.8.4                                     |
| visualsearch.E004  | a stored vector size differs from its encoder's (image or text) |
| visualsearch.E005  | the VISUALSEARCH settings are invalid                            |
| visualsearch.E006  | an EmbeddedImage model lost its HNSW or status index             |
| visualsearch.W001  | no Celery broker is configured                                   |
| visualsearch.W002  | a 512-d or larger vector column is stored out of line (TOAST)    |
"""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

MIN_PGVECTOR = (0, 8, 4)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list:
    """E005: image model, product field, FILTERS, copies, encoders, the text bridge and the
    fusion recipe resolve; W001: a broker is set."""
    from visualsearch.encoders import get_encoder
    from visualsearch.encoders.bridge import check_settings as check_bridge_settings
    from visualsearch.ingest.fusion import check_settings as check_fusion_settings
    from visualsearch.query.filters import get_filters
    from visualsearch.query.recommend import check_settings as check_recommend_settings
    from visualsearch.storage.copies import copied_fields
    from visualsearch.storage.layout import check_image_model, missing_indexes
    from visualsearch.storage.lookup import get_product_model

    messages = []
    try:
        check_image_model()
        get_product_model()
        check_hooks()
        get_filters()  # every FILTERS lookup fits the product model
        copied_fields()  # IMAGE_FILTER_FIELDS name matching columns
        encoder = get_encoder()
        if encoder.dimensions < 1:
            raise ImproperlyConfigured(f"{type(encoder).__name__} reports no vector size.")
        encoder.model_id  # noqa: B018  (an adapted encoder checks its projection file here)
        check_text_settings()
        check_recommend_settings()
        check_bridge_settings()
        check_fusion_settings()
    except ImproperlyConfigured as exc:
        messages.append(
            Error(
                str(exc),
                hint="See the settings reference in the visualsearch README.",
                id="visualsearch.E005",
            )
        )
    else:
        messages += _index_errors(missing_indexes())
    try:
        from celery import current_app

        broker = current_app.conf.broker_url
    except Exception:  # pragma: no cover - celery is a hard dependency
        broker = None
    if not broker:
        messages.append(
            Warning(
                "No Celery broker is configured: images will stay 'pending' until "
                "`manage.py visualsearch_reindex` runs.",
                hint="Set CELERY_BROKER_URL (for example redis://127.0.0.1:6379/0) and load "
                "it in your Celery app with config_from_object('django.conf:settings', "
                "namespace='CELERY').",
                id="visualsearch.W001",
            )
        )
    return messages


def check_hooks() -> None:
    """Raise ``ImproperlyConfigured`` unless every ``PRODUCT_*`` hook set imports as a
    callable (widgets and API results would fail at request time otherwise)."""
    from visualsearch.conf import visualsearch_settings

    hooks = ("PRODUCT_NAME", "PRODUCT_PRICE", "PRODUCT_URL", "PRODUCT_THUMBNAIL")
    for name in (*hooks, "PRODUCT_QUERYSET"):
        hook = getattr(visualsearch_settings, f"{name}_CLASS")
        if hook is not None and not callable(hook):
            raise ImproperlyConfigured(
                f"VISUALSEARCH[{name!r}] must name a callable, got {hook!r}."
            )


def _index_errors(missing: list[str]) -> list:
    if not missing:
        return []
    from visualsearch.conf import visualsearch_settings

    return [
        Error(
            f"{visualsearch_settings.IMAGE_MODEL} includes EmbeddedImage but has no "
            f"{' and no '.join(missing)}: its own Meta.indexes replaced EmbeddedImage's.",
            hint="Write class Meta(EmbeddedImage.Meta) and keep *EmbeddedImage.Meta.indexes in "
            "indexes = [...], or drop EmbeddedImage and let visualsearch keep the vectors in "
            "its own table.",
            id="visualsearch.E006",
        )
    ]


def check_text_settings() -> None:
    """Raise ``ImproperlyConfigured`` when text search is on but misconfigured."""
    from visualsearch.conf import visualsearch_settings
    from visualsearch.encoders import get_text_encoder
    from visualsearch.ingest.texts import text_fields
    from visualsearch.storage.lookup import get_text_model

    if get_text_model() is None:
        return
    text_fields()
    encoder = get_text_encoder()
    if encoder.dimensions < 1:
        raise ImproperlyConfigured(f"{type(encoder).__name__} reports no vector size.")
    for key in ("RRF_K", "RRF_CANDIDATES"):
        value = getattr(visualsearch_settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ImproperlyConfigured(
                f"VISUALSEARCH[{key!r}] must be a positive integer, got {value!r}."
            )


@register(Tags.database)
def check_database(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list:
    """E001-E004 and W002 for every database Django was asked to check."""
    messages: list = []
    for alias in databases or []:
        messages.extend(check_connection(connections[alias]))
    return messages


def check_connection(connection: Any) -> list:
    """The database checks for one connection (usable on any connection, e.g. in tests)."""
    if connection.vendor != "postgresql":
        return [
            Error(
                f"Database {connection.alias!r} uses {connection.vendor}; visualsearch needs "
                "PostgreSQL with the pgvector extension.",
                hint="Point DATABASES (or DATABASE_URL) at PostgreSQL 15+ with pgvector 0.8.4+.",
                id="visualsearch.E001",
            )
        ]
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT default_version, installed_version FROM pg_available_extensions "
                "WHERE name = 'vector'"
            )
            row = cursor.fetchone()
    except DatabaseError as exc:
        return [
            Error(
                f"Could not query database {connection.alias!r}: {exc}",
                id="visualsearch.E002",
            )
        ]
    if row is None:
        server = connection.pg_version // 10000
        return [
            Error(
                f"The pgvector extension ('vector') is not installed on the PostgreSQL {server} "
                f"server of database {connection.alias!r}.",
                hint="Install pgvector 0.8.4+ on the server (the pgvector/pgvector Docker "
                "image, or your distribution's postgresql-NN-pgvector package), or leave "
                "DATABASE_URL unset to use the embedded development server.",
                id="visualsearch.E002",
            )
        ]
    default_version, installed_version = row
    version = installed_version or default_version
    if _version(version) < MIN_PGVECTOR:
        wanted = ".".join(map(str, MIN_PGVECTOR))
        return [
            Error(
                f"pgvector {version} is too old on database {connection.alias!r}; "
                f"visualsearch needs {wanted} or newer (iterative index scans).",
                hint="Upgrade the pgvector package, then run ALTER EXTENSION vector UPDATE.",
                id="visualsearch.E003",
            )
        ]
    return check_dimensions(connection) + check_storage(connection)


def check_dimensions(connection: Any) -> list:
    """E004: the embedding columns' declared sizes equal their encoders' (image and text)."""
    from visualsearch.encoders import get_encoder, get_text_encoder
    from visualsearch.storage.layout import image_storage
    from visualsearch.storage.lookup import get_text_model

    try:
        pairs = [(image_storage().model, get_encoder)]
        text_model = get_text_model()
        if text_model is not None:
            pairs.append((text_model, get_text_encoder))
        columns = [(model, encoder().dimensions, encoder) for model, encoder in pairs]
    except ImproperlyConfigured:
        return []  # reported by E005
    messages = []
    for model, expected, encoder in columns:
        table = model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.atttypmod FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
                "AND a.attname = 'embedding' AND NOT a.attisdropped",
                [table],
            )
            row = cursor.fetchone()
        if row is None or row[0] == expected:
            continue  # not migrated yet, or matching
        option = " --texts" if encoder is get_text_encoder else ""
        messages.append(
            Error(
                f"{table}.embedding stores {row[0]}-d vectors but the configured encoder "
                f"({encoder().model_id}) produces {expected}-d vectors.",
                hint=f"Run `manage.py visualsearch_reindex --resize{option}` to resize the column "
                "(existing vectors are dropped and re-embedded), or configure the former encoder.",
                id="visualsearch.E004",
            )
        )
    return messages


#: Vectors of this many bytes or more (``4 * d + 8``) push a row over Postgres' TOAST threshold
#: (about 2 KB, the other columns included): from about 450 dimensions.
TOAST_VECTOR_BYTES = 1800


def check_storage(connection: Any) -> list:
    """W002: an embedding column large enough for TOAST is stored out of line (``EXTERNAL``)."""
    from visualsearch.storage.layout import image_storage
    from visualsearch.storage.lookup import get_text_model

    try:
        models = [image_storage().model, get_text_model()]
    except ImproperlyConfigured:
        return []  # reported by E005
    messages = []
    for model in filter(None, models):
        table = model._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.atttypmod, a.attstorage FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' "
                "AND NOT a.attisdropped",
                [table],
            )
            row = cursor.fetchone()
        if row is None or row[1] in ("p", "m") or 4 * row[0] + 8 < TOAST_VECTOR_BYTES:
            continue  # not migrated yet, stored in the row, or small enough to stay there
        messages.append(
            Warning(
                f"{table}.embedding keeps its {row[0]}-d vectors out of line (TOAST): every "
                "row a query reads costs an extra index lookup.",
                hint="Add visualsearch.storage.operations.EmbeddingStorage("
                f"{model._meta.model_name!r})"
                " to a migration of your app (then VACUUM FULL the table to move existing "
                "vectors into the rows).",
                id="visualsearch.W002",
            )
        )
    return messages


@register()
def check_relevance_cutoff(app_configs: Any = None, **kwargs: Any) -> list:
    """E005: ``RELEVANCE_CUTOFF`` is None or a cut-off :mod:`visualsearch.query.cutoff` reads
    (else every search request would fail)."""
    from visualsearch.query.cutoff import configured_cutoff

    try:
        configured_cutoff()
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="See RELEVANCE_CUTOFF in the settings reference (docs/settings.md).",
                id="visualsearch.E005",
            )
        ]
    return []
