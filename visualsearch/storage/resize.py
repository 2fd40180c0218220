"""Resizing the vector column to another encoder's size, with the indexes that depend on it.

``ALTER COLUMN … TYPE vector(n)`` rebuilds indexes on the column itself, but an index on an
expression keeps the size written into it: with ``HNSW_HALFVEC`` the HNSW index, and the
partial filter indexes (:mod:`visualsearch.storage.filter_indexes`), are on
``embedding::halfvec(<old n>)``, and every later write would fail with "expected <old n>
dimensions". They are recreated here for the new size, with their comments, in the same
transaction; a covering filter index (``filter_scan_index``) that cannot hold the new
vectors is dropped with a warning.
"""

from __future__ import annotations

import re

from django.db import connections, router, transaction
from django.utils import timezone

from visualsearch.models import EmbeddingStatus
from visualsearch.storage.indexes import MAX_FILTER_SCAN_DIMENSIONS

__all__ = ["resize"]

_SIZED = re.compile(r"\((\w+)\)::(halfvec|vector)\(\d+\)")


def resize(model: type, dimensions: int, column: str = "embedding") -> tuple[int, list[str]]:
    """Give ``model``'s vector column ``dimensions`` (stored vectors are dropped, rows set
    ``pending``); returns the rows to embed again and warnings for the operator."""
    using = router.db_for_write(model)
    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    warnings = []
    with transaction.atomic(using=using), connection.cursor() as cursor:
        # Deferred FK checks of earlier writes in this transaction block ALTER TABLE.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        storage = _storage(cursor, model._meta.db_table, column)
        dependent = _sized_indexes(cursor, model._meta.db_table, column)
        for name, _definition, _comment in dependent:
            cursor.execute(f"DROP INDEX {quote(name)}")
        cursor.execute(
            f"ALTER TABLE {table} ALTER COLUMN {quote(column)} TYPE vector({int(dimensions)}) "
            "USING NULL"
        )
        if storage:  # a new type resets the column's storage to the type's: keep PLAIN/MAIN
            cursor.execute(
                f"ALTER TABLE {table} ALTER COLUMN {quote(column)} SET STORAGE {storage}"
            )
        for name, definition, comment in dependent:
            cursor.execute(_SIZED.sub(rf"(\1)::\2({int(dimensions)})", definition))
            if comment:
                literal = "'" + comment.replace("'", "''") + "'"  # DDL takes no parameters
                cursor.execute(f"COMMENT ON INDEX {quote(name)} IS {literal}")
        if dimensions > MAX_FILTER_SCAN_DIMENSIONS:
            warnings += _drop_covering(cursor, model._meta.db_table, column, quote)
        count = model._base_manager.update(
            embedding_status=EmbeddingStatus.PENDING,
            embedding_model="",
            embedding_hash="",
            embedding_updated_at=timezone.now(),
        )
    return count, warnings


def _storage(cursor, table: str, column: str) -> str | None:
    cursor.execute(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s",
        [table, column],
    )
    return {"p": "PLAIN", "m": "MAIN"}.get(cursor.fetchone()[0])


def _indexes(cursor, table: str) -> list[tuple[str, str, str | None]]:
    cursor.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class')"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) ORDER BY c.relname",
        [table],
    )
    return cursor.fetchall()


def _sized_indexes(cursor, table: str, column: str) -> list[tuple[str, str, str | None]]:
    """Indexes on an expression that casts ``column`` to a fixed size."""
    return [
        row
        for row in _indexes(cursor, table)
        if any(match.group(1) == column for match in _SIZED.finditer(row[1]))
    ]


def _drop_covering(cursor, table: str, column: str, quote) -> list[str]:
    """Drop B-trees that include ``column`` (its new vectors no longer fit an entry)."""
    warnings = []
    for name, definition, _comment in _indexes(cursor, table):
        include = re.search(r"INCLUDE \(([^)]*)\)", definition)
        if include and column in [part.strip() for part in include.group(1).split(",")]:
            cursor.execute(f"DROP INDEX {quote(name)}")
            warnings.append(
                f"Dropped {name}: a B-tree entry cannot hold {column} vectors of more than "
                f"{MAX_FILTER_SCAN_DIMENSIONS} dimensions; remove its filter_scan_index() from "
                "Meta.indexes (makemigrations), the plain index on the field serves instead."
            )
    return warnings
