"""Compiled statements reused by shape: the ORM builds a query once, later calls swap values.

Building and compiling the querysets of one similarity query costs about as much Python time
as Postgres needs to answer it from the HNSW index (docs/performance.md). The queries of
:mod:`visualsearch.query` differ from call to call only in a few values (the query vector,
the product, the products to leave out), so :func:`compiled` builds each shape once with
markers standing for those values, remembers where the markers land among the SQL
parameters, and afterwards only puts the new values in their places. What stays fixed
(filters, limits, settings) belongs to the key.

A shape whose markers do not all come back among the parameters (a value the ORM transforms,
such as a non-integer primary key) is never cached: it is compiled on every call, as before.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from typing import Any
from uuid import UUID

import numpy as np
from django.core.signals import setting_changed
from django.db import connections, models
from pgvector.psycopg import register_vector

__all__ = ["clear", "compiled", "freeze", "in_bulk"]

#: Statements kept (least recently used ones go first).
SIZE = 512
#: Integer markers count down from here: inside the 32-bit range, so that Django's integer
#: lookups take them as they are, and below any primary key in use.
INT_MARKER = -2_000_000_000
UNCACHEABLE = object()

_cache: OrderedDict[Hashable, Any] = OrderedDict()
_lock = threading.Lock()


def compiled(
    key: Hashable, build: Callable[[Mapping[str, Any]], Any], values: Mapping[str, Any]
) -> tuple[str, tuple]:
    """``(sql, params)`` of the queryset ``build(values)``, built and compiled once per ``key``.

    ``values`` are the per-call values: integers, strings, lists of integers (a list's
    length is part of the shape) or numpy vectors (compiled as a string, sent as they are).
    ``build`` must treat them as opaque (only pass them to lookups and expressions), since it
    is called with markers in their place.
    """
    with _lock:
        entry = _cache.get(key)
        if entry is not None:
            _cache.move_to_end(key)
    if entry is None:
        entry = _compile(build, values)
        with _lock:
            _cache[key] = entry
            if len(_cache) > SIZE:
                _cache.popitem(last=False)
    if entry is UNCACHEABLE:
        return build(values).query.sql_with_params()
    sql, template, slots = entry
    params = list(template)
    for index, (name, position) in slots.items():
        value = values[name]
        params[index] = value if position is None else value[position]
    return sql, tuple(params)


def in_bulk(model: type, pks: list, using: str | None = None) -> dict:
    """``model._default_manager.in_bulk(pks)``, its statement compiled once per number of pks.

    Falls back to ``in_bulk`` when the default manager's queryset is not a plain select of
    the concrete fields of every row (its filters could depend on the moment, such as
    "published before now"; ``select_related``, ``only``/``defer``, annotations). Values go
    through the same database converters as in a queryset.
    """
    manager = model._default_manager
    if using is not None:
        manager = manager.db_manager(using)
    if not pks:
        return {}
    queryset = manager.all()
    query = queryset.query
    if (
        query.where
        or query.select_related
        or query.deferred_loading[0]
        or query.annotations
        or query.extra
        or query.distinct
    ):
        return queryset.in_bulk(pks)
    db = queryset.db
    key = ("in_bulk", db, model._meta.label, len(pks))
    sql, params = compiled(
        key, lambda values: queryset.filter(pk__in=values["pks"]).order_by(), {"pks": pks}
    )
    names, converters = _loader(model, db)
    connection = connections[db]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    found = {}
    for row in rows:
        if converters:
            row = list(row)
            for index, column, functions in converters:
                for function in functions:
                    row[index] = function(row[index], column, connection)
        instance = model.from_db(db, names, row)
        found[instance.pk] = instance
    return found


@lru_cache(maxsize=64)
def _loader(model: type, db: str) -> tuple[list[str], list]:
    """The attnames a plain select of ``model`` returns, and the converters of its columns."""
    connection = connections[db]
    fields = model._meta.concrete_fields
    converters = []
    for index, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        functions = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if functions:
            converters.append((index, column, functions))
    return [field.attname for field in fields], converters


def vector_parameters(connection: Any) -> None:
    """Let Django's ``connection`` send vectors (numpy arrays) as pgvector values.

    Registers pgvector's adapters once per database connection: a 512-d vector then travels
    in binary (with server-side parameters) instead of as 5 KB of text that Python formats and
    Postgres parses for every query.
    """
    connection.ensure_connection()
    raw = connection.connection
    if raw not in _registered:
        register_vector(raw)
        _registered.add(raw)


_registered: weakref.WeakSet = weakref.WeakSet()


def clear() -> None:
    """Forget every compiled statement (settings changed, or the schema did)."""
    with _lock:
        _cache.clear()


def freeze(value: Any) -> Hashable | None:
    """A hashable stand-in for a filter value that compiles to the same SQL, or ``None``
    when there is none (the query is then compiled per call)."""
    if value is None or isinstance(
        value, bool | int | float | str | Decimal | date | datetime | time | UUID
    ):
        return (type(value).__name__, value)
    if isinstance(value, models.Model):
        return (value._meta.label, value.pk) if value.pk is not None else None
    if isinstance(value, list | tuple):
        items = [freeze(item) for item in value]
        return None if any(item is None for item in items) else ("seq", tuple(items))
    return None


def _compile(build: Callable[[Mapping[str, Any]], Any], values: Mapping[str, Any]) -> Any:
    markers: dict[str, Any] = {}
    wanted: dict[Any, tuple[str, int | None]] = {}
    counter = 0
    for name, value in values.items():
        if isinstance(value, np.ndarray):  # a vector: compiled as a string, sent as a vector
            counter += 1
            markers[name] = f"\x00marker:{counter}"
            wanted[markers[name]] = (name, None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | str | list | tuple):
            return UNCACHEABLE
        if isinstance(value, list | tuple):
            if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
                return UNCACHEABLE
            markers[name] = []
            for position in range(len(value)):
                counter += 1
                markers[name].append(INT_MARKER - counter)
                wanted[INT_MARKER - counter] = (name, position)
        else:
            counter += 1
            marker = INT_MARKER - counter if isinstance(value, int) else f"\x00marker:{counter}"
            markers[name] = marker
            wanted[marker] = (name, None)
    try:
        sql, params = build(markers).query.sql_with_params()
    except Exception:  # a marker the ORM refused: compile this shape per call
        return UNCACHEABLE
    slots = {
        index: wanted[param]
        for index, param in enumerate(params)
        if type(param) in (int, str) and param in wanted  # an expression may repeat a value
    }
    if set(slots.values()) != set(wanted.values()):
        return UNCACHEABLE  # a marker the ORM transformed (or dropped)
    return sql, tuple(params), slots


def _clear_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting in ("VISUALSEARCH", "DATABASES"):
        clear()


setting_changed.connect(_clear_on_change, dispatch_uid="visualsearch.storage.statements.clear")
