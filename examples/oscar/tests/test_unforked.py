"""The point of the example: Oscar's catalogue is Oscar's, untouched, and visualsearch keeps
its vectors in its own table, created by plain ``migrate``."""

from __future__ import annotations

import io
from pathlib import Path

from django.apps import apps
from django.core.management import call_command
from django.db import connection
from oscar.apps.catalogue.models import ProductImage

from visualsearch.models import ImageEmbedding

EXAMPLE_DIR = Path(__file__).resolve().parent.parent


def test_catalogue_is_oscars_own_app():
    config = apps.get_app_config("catalogue")
    assert config.name == "oscar.apps.catalogue"  # not a fork (oscar_fork_app)
    assert ProductImage.__module__ == "oscar.apps.catalogue.models"
    assert not (EXAMPLE_DIR / "catalogue").exists()


def test_oscars_image_table_has_only_oscars_columns(db):
    with connection.cursor() as cursor:
        columns = {
            column.name
            for column in connection.introspection.get_table_description(
                cursor, ProductImage._meta.db_table
            )
        }
    assert columns == {field.column for field in ProductImage._meta.concrete_fields}
    assert not any("embedding" in column for column in columns)


def test_vectors_live_in_visualsearchs_table_linked_to_oscars_images(db):
    link = ImageEmbedding._meta.pk
    assert link.one_to_one and link.related_model is ProductImage
    tables = connection.introspection.table_names()
    assert ImageEmbedding._meta.db_table in tables


def test_migrations_match_the_models(db):
    """Oscar's models, visualsearch's side table for them: nothing left to ``makemigrations``."""
    out = io.StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_glue_lines_are_counted():
    from count_glue import main  # examples/oscar is on the path (pytest.ini)

    total = main()
    assert 0 < total <= 30, f"{total} glue lines: the adopter's part has grown"
