"""System checks, against the real embedded Postgres and this machine's system Postgres 15."""

import os
import subprocess
import sys

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresWrapper
from django.db.backends.sqlite3.base import DatabaseWrapper as SqliteWrapper

from visualsearch.checks import check_connection, check_settings

SYSTEM_PG = {
    "host": os.environ.get("VISUALSEARCH_SYSTEM_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("VISUALSEARCH_SYSTEM_PG_PORT", "5432")),
    "user": os.environ.get("VISUALSEARCH_SYSTEM_PG_USER", "postgres"),
    "dbname": "postgres",
}


def ids(messages):
    return [message.id for message in messages]


@pytest.mark.django_db
def test_embedded_database_passes():
    assert check_connection(connection) == []
    call_command("check", "--database", "default", "--fail-level", "WARNING")


def test_non_postgres_database_is_an_error():
    wrapper = SqliteWrapper(
        {**connection.settings_dict, "ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        alias="other",
    )
    messages = check_connection(wrapper)
    assert ids(messages) == ["visualsearch.E001"]
    assert "sqlite" in messages[0].msg


def test_missing_pgvector_on_system_postgres_15_is_a_clear_error(django_db_blocker):
    try:
        with psycopg.connect(connect_timeout=3, **SYSTEM_PG) as conn:
            version = conn.info.server_version
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"system Postgres not reachable at {SYSTEM_PG['host']}:{SYSTEM_PG['port']}: {exc}"
        )
    wrapper = PostgresWrapper(
        {
            **connection.settings_dict,
            "NAME": SYSTEM_PG["dbname"],
            "USER": SYSTEM_PG["user"],
            "PASSWORD": "",
            "HOST": SYSTEM_PG["host"],
            "PORT": str(SYSTEM_PG["port"]),
            "OPTIONS": {},
        },
        alias="system",
    )
    # Registered under its alias: django.contrib.postgres looks connections up by alias when
    # one opens (its hstore handler).
    connections["system"] = wrapper
    try:
        with django_db_blocker.unblock():
            messages = check_connection(wrapper)
    finally:
        wrapper.close()
        del connections["system"]
    assert ids(messages) == ["visualsearch.E002"]
    assert f"PostgreSQL {version // 10000}" in messages[0].msg
    assert "pgvector" in messages[0].msg and "Install pgvector" in messages[0].hint


def test_migrate_against_postgres_without_pgvector_stops_with_the_check(tmp_path):
    try:
        psycopg.connect(connect_timeout=3, **SYSTEM_PG).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"system Postgres not reachable: {exc}")
    url = f"postgresql://{SYSTEM_PG['user']}:@{SYSTEM_PG['host']}:{SYSTEM_PG['port']}/postgres"
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--plan"],
        env={**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "shop.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "visualsearch.E002" in result.stderr


@pytest.mark.django_db
def test_dimension_mismatch_is_reported(settings):
    settings.VISUALSEARCH = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.efficientnet.EfficientNetLite0Encoder",
        "ENCODER_OPTIONS": {},
    }
    messages = check_connection(connection)
    assert ids(messages) == ["visualsearch.E004"]
    assert "32-d" in messages[0].msg and "1280-d" in messages[0].msg


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"IMAGE_MODEL": "catalog.Nope"}, ["is not an installed model"]),
        ({"IMAGE_MODEL": "Nope"}, ["is not an installed model", '"app_label.Model"']),
        ({"IMAGE_MODEL": None}, ["Set VISUALSEARCH", "IMAGE_MODEL"]),
        ({"IMAGE_MODEL": "catalog.Product"}, ["IMAGE_FIELD", "its file fields: none"]),
        ({"IMAGE_FIELD": "picture"}, ["'picture' is not a field", "file fields: ['image']"]),
        ({"IMAGE_FIELD": "alt_text"}, ["'alt_text'", "CharField, not an ImageField"]),
        ({"PRODUCT_FIELD": "position"}, ["PRODUCT_FIELD", "must be a ForeignKey"]),
        ({"PRODUCT_FIELD": "nope"}, ["'nope' is not a field"]),
    ],
)
def test_bad_settings_are_reported(settings, changes, words):
    """Every wrong name is a system-check error that says which setting, with a hint."""
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, **changes}
    messages = check_settings()
    assert ids(messages) == ["visualsearch.E005"]
    assert all(word in messages[0].msg for word in words), messages[0].msg
    assert messages[0].hint


def test_an_embedded_image_model_without_its_indexes_is_an_error(monkeypatch):
    """Putting the shop's own Meta first drops EmbeddedImage's indexes: E006, not silence."""
    from shop.catalog.models import ProductImage

    monkeypatch.setattr(ProductImage._meta, "indexes", [])
    messages = check_settings()
    assert ids(messages) == ["visualsearch.E006"]
    assert "HNSW index" in messages[0].msg and "status" in messages[0].msg
    assert "EmbeddedImage.Meta" in messages[0].hint


def test_a_filter_lookup_that_does_not_fit_the_product_is_reported(settings):
    filters = {"colour": "colour__name"}  # the demo product has no colour field
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "FILTERS": filters}
    messages = check_settings()
    assert ids(messages) == ["visualsearch.E005"]
    assert "colour" in messages[0].msg


@pytest.mark.parametrize(
    "key, value", [("RECOMMEND_DIVERSITY", 2), ("RECOMMEND_EXPLORATION_STRATEGY", "clever")]
)
def test_bad_recommendation_settings_are_reported(settings, key, value):
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, key: value}
    messages = check_settings()
    assert ids(messages) == ["visualsearch.E005"]
    assert key in messages[0].msg


def test_missing_broker_is_a_warning(settings):
    from celery import current_app

    broker = current_app.conf.broker_url
    current_app.conf.broker_url = None
    try:
        assert "visualsearch.W001" in ids(check_settings())
    finally:
        current_app.conf.broker_url = broker
