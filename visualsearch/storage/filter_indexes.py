"""Partial HNSW indexes for frequent filter values: one small graph per category.

A filter copied onto the image rows (``IMAGE_FILTER_FIELDS``) answers ``category=shoes`` by an
exact scan over the category's images. A partial HNSW index ``WHERE category_id = 7`` holds
only that category's images, so the query walks a small graph instead
(``FILTER_INDEX_EF_SEARCH``) and stays approximate the way unfiltered queries are: for a few
thousand rows the exact scan is faster, and these indexes pay for values with many more
rows (docs/performance.md, Filtered queries).
``manage.py visualsearch_filter_indexes`` builds one for every value of a copied field with
at least ``--min-rows`` ready images; :mod:`visualsearch.query` uses it for a filter on that
value alone, and the exact scan (or the iterative scan) for the rest.

Each index carries a comment naming the field and value it serves, which is how they are
found again (once a minute per process, :func:`indexed_values`). They follow inserts and
updates like any index; values that grow past ``--min-rows`` need the command again.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router
from django.db.models import Count, Q

from visualsearch.models import image_hnsw_index
from visualsearch.storage.copies import copied_fields
from visualsearch.storage.lookup import get_image_model

__all__ = ["create", "drop", "indexed_values", "serving_index"]

MARK = "visualsearch_filter"
#: Seconds the indexes found are remembered per process.
TTL = 60.0
_found: dict[str, tuple[float, dict[str, set]]] = {}


def _image_model_and_connection() -> tuple[type, Any]:
    model = get_image_model()
    return model, connections[router.db_for_write(model)]


def indexed_values(using: str | None = None) -> dict[str, set]:
    """``{copied image field: {values that have a partial index}}``, re-read once a minute."""
    model, connection = _image_model_and_connection()
    db = using or connection.alias
    cached = _found.get(db)
    if cached is not None and time.monotonic() - cached[0] < TTL:
        return cached[1]
    found: dict[str, set] = {}
    for comment in _comments(connections[db], model):
        found.setdefault(comment["field"], set()).add(comment["value"])
    _found[db] = (time.monotonic(), found)
    return found


def serving_index(filters: dict[str, Any], using: str | None = None) -> bool:
    """Whether ``filters`` is one equality on a copied field whose value has a partial index."""
    if len(filters) != 1 or not copied_fields():
        return False
    [(lookup, value)] = filters.items()
    name = lookup.removesuffix("__exact")
    for field, source in copied_fields().values():
        if name in (source.name, source.attname):
            return getattr(value, "pk", value) in indexed_values(using).get(field.name, ())
    return False


def create(field: str, min_rows: int, *, concurrently: bool = False, progress: Any = None) -> list:
    """Build the missing partial indexes for the values of the copied image ``field`` with at
    least ``min_rows`` ready images; returns the values indexed now. ``progress()`` is called
    after each index."""
    model, connection = _image_model_and_connection()
    column = _column(field)
    have = indexed_values(connection.alias).get(field, set())
    counts = _counts(model, column.attname)
    wanted = [value for value, rows in counts if rows >= min_rows and value not in have]
    made = []
    for value in wanted:
        index = image_hnsw_index(_name(model, field, value), Q(**{column.attname: value}))
        with connection.schema_editor(atomic=not concurrently) as editor:
            if not concurrently:  # deferred foreign-key checks of earlier writes block DDL
                editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            editor.add_index(model, index, concurrently=concurrently)
            comment = json.dumps({MARK: {"field": field, "value": value}})
            editor.execute(
                f"COMMENT ON INDEX {editor.quote_name(index.name)} IS {editor.quote_value(comment)}"
            )
        made.append(value)
        if progress is not None:
            progress()
    _found.pop(connection.alias, None)
    return made


def drop(field: str | None = None) -> int:
    """Drop the partial indexes (of one copied ``field``, or all); returns how many."""
    model, connection = _image_model_and_connection()
    names = [
        row["name"]
        for row in _comments(connection, model, names=True)
        if field is None or row["field"] == field
    ]
    with connection.schema_editor() as editor:
        for name in names:
            editor.execute(f"DROP INDEX IF EXISTS {editor.quote_name(name)}")
    _found.pop(connection.alias, None)
    return len(names)


def _counts(model: type, attname: str) -> list[tuple[Any, int]]:
    """``[(value, ready images)]`` of a copied column, NULL left out."""
    rows = (
        model.objects.ready()
        .exclude(**{f"{attname}__isnull": True})
        .values(attname)
        .order_by()
        .annotate(rows=Count("pk"))
        .values_list(attname, "rows")
    )
    return list(rows)


def _column(field: str) -> Any:
    fields = copied_fields()
    if field not in fields:
        raise ImproperlyConfigured(
            f'{field!r} is not a copied field (VISUALSEARCH["IMAGE_FILTER_FIELDS"]: '
            f"{sorted(fields) or 'none'})."
        )
    return fields[field][0]


def _name(model: type, field: str, value: Any) -> str:
    digest = hashlib.sha256(f"{model._meta.db_table}:{field}:{value!r}".encode()).hexdigest()
    return f"vs_filter_{digest[:20]}"


def _comments(connection: Any, model: type, names: bool = False) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, obj_description(i.indexrelid, 'pg_class') FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass(%s)",
            [model._meta.db_table],
        )
        rows = cursor.fetchall()
    found = []
    for name, comment in rows:
        try:
            mark = json.loads(comment or "")[MARK]
        except (ValueError, KeyError, TypeError):
            continue
        found.append({**mark, "name": name} if names else mark)
    return found
