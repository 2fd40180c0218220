"""The one k-NN path: a query vector to the nearest products, through the HNSW index.

One ORM statement over the image vectors ordered by ``embedding <=> query`` (served by the
HNSW index, or an exact scan for selective filters), compiled once per shape
(:mod:`visualsearch.storage.statements`), image hits grouped by product, products loaded.
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

import numpy as np
from django.db import connections, transaction
from django.db.models import Avg, Func, Subquery, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, HalfVectorField, MaxInnerProduct
from psycopg import sql as pgsql

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.base import l2_normalize
from visualsearch.storage import copies, filter_indexes, statements
from visualsearch.storage.layout import image_storage
from visualsearch.storage.lookup import get_product_model

#: Image hits fetched per wanted product (a product may have several near-identical images).
OVERFETCH = 4
MAX_FETCH = 4000


def nearest_products(
    vector: np.ndarray,
    k: int = 8,
    *,
    exclude: Any = None,
    exact: bool = False,
    queryset: Any = None,
    **filters: Any,
) -> list:
    """The ``k`` products whose best image is nearest to ``vector``.

    The strategy is chosen up front by selectivity: a filtered query that the planner expects
    to match at most ``EXACT_SEARCH_MAX_ROWS`` images is answered by an exact scan over those
    rows (through the filter's B-tree index); anything else uses the HNSW index with
    ``hnsw.iterative_scan``, so filtered queries keep scanning until they have enough rows.
    When the index still comes back short, the query is repeated as an exact scan over the
    filtered rows, so ``k`` results come back whenever ``k`` exist. ``exact=True`` forces the
    exact scan. ``exclude`` is a product, or a list, set or tuple of product primary keys, to
    leave out.
    """
    # Unit length: the exact scan ranks by inner product (_distance).
    values: dict[str, Any] = {"vector": l2_normalize([vector])[0]}
    if isinstance(exclude, list | set | frozenset | tuple):
        values["exclude"] = list(exclude)
    elif exclude is not None:
        values["exclude"] = getattr(exclude, "pk", exclude)
    return nearest(k, values, exact=exact, queryset=queryset, **filters)


def nearest(
    k: int, values: dict[str, Any], *, exact: bool = False, queryset: Any = None, **filters: Any
) -> list:
    """``nearest_products`` for the query ``values``: ``vector`` (its text form) or
    ``mean_of`` (a product pk: the mean of its ready image vectors, computed inside the k-NN
    statement; a product without any matches no row), and ``exclude`` (a pk or a list).

    Each statement is compiled once per shape (:mod:`~visualsearch.storage.statements`); filters
    whose
    values cannot be keyed are compiled per call.
    """
    if k < 1:
        return []
    filters = compact_filters(filters)
    storage = image_storage()
    model = storage.model
    db = model.objects.db
    parameters = _filter_parameters(filters)
    values = {**values, **parameters}
    keyed = {name: v for name, v in filters.items() if f"filter:{name}" not in parameters}
    frozen = tuple(sorted((name, statements.freeze(value)) for name, value in keyed.items()))
    cacheable = all(value is not None for _name, value in frozen)
    # A filter value with its own partial HNSW index walks that index (visualsearch_filter_indexes).
    indexed = bool(filters) and not exact and filter_indexes.serving_index(filters, db)
    if filters and not indexed:
        exact = exact or _prefers_exact(storage, filters, cacheable)
    exclude = values.get("exclude")
    shape = (
        db,
        model._meta.label,
        model.embedding_models(),
        model._meta.get_field("embedding").dimensions,
        bool(visualsearch_settings.HNSW_HALFVEC),
        "mean_of" in values,
        len(exclude) if isinstance(exclude, list) else exclude is not None,
        tuple(sorted(filters)),
        frozen,
    )
    fetch = k * OVERFETCH
    while True:
        build = partial(_knn_queryset, storage, limit=fetch, exact=exact, filters=filters)
        if cacheable:
            sql, params = statements.compiled((*shape, fetch, exact), build, values)
        else:
            sql, params = build(values).query.sql_with_params()
        rows = run(sql, params, db, fetch, exact, partial=indexed)
        best = _best_per_product(rows)
        if len(best) >= k or fetch >= MAX_FETCH:
            break
        if len(rows) < fetch:  # the index ran out of candidates before LIMIT
            if exact:
                break
            exact = True
        else:
            fetch *= 4
    return load_products(best[:k], queryset)


def _knn_queryset(storage: Any, values: dict, *, limit: int, exact: bool, filters: dict) -> Any:
    """``(product pk, distance)`` of the ``limit`` nearest ready images, as a queryset."""
    model = storage.model
    product_field = storage.product
    images = _filtered(storage, values, filters)
    exclude = values.get("exclude")
    if isinstance(exclude, list):
        if exclude:
            images = images.exclude(**{f"{product_field}__in": exclude})
    elif exclude is not None:
        images = images.exclude(**{product_field: exclude})
    if "mean_of" in values:
        field = model._meta.get_field("embedding")
        # The mean is computed in the k-NN query itself (a subquery Postgres runs once,
        # before the index scan): no vector travels to Python and back. Cosine distance
        # ignores length, but the exact scan ranks by inner product (_distance), so the mean
        # is scaled to unit length, once; no ready image makes it NULL, and then no row
        # matches (a one-time filter: Postgres checks it before it scans).
        mean = Avg("embedding", output_field=field)
        query = Subquery(
            model.objects.ready()
            .filter(**{product_field: values["mean_of"]})
            .values(product_field)
            .annotate(mean=Func(mean, function="l2_normalize", output_field=field))
            .values("mean"),
            output_field=field,
        )
        images = images.alias(query_vector=query).filter(query_vector__isnull=False)
    else:  # a marker string, or (compiled per call) the vector's text
        vector = values["vector"]
        query = Value(vector if isinstance(vector, str) else _vector_text(vector))
    return (
        images.annotate(distance=_distance(model, query, exact))
        .order_by("distance")
        .values_list(product_field, "distance")[:limit]
    )


def _filter_parameters(filters: dict) -> dict:
    """Integer and string filter values travel as statement parameters (``filter:<lookup>``);
    the rest (booleans, decimals, instances…) are part of the statement's key."""
    return {f"filter:{name}": value for name, value in filters.items() if type(value) in (int, str)}


def _filtered(storage: Any, values: dict, filters: dict) -> Any:
    """The ready images matching ``filters`` (their values from ``values`` where given)."""
    images = storage.model.objects.ready()
    if filters:
        filters = {name: values.get(f"filter:{name}", value) for name, value in filters.items()}
        images = images.filter(**copies.image_lookups(filters))
    return images


#: Seconds a planner estimate for a filter is reused (:func:`_prefers_exact`).
ESTIMATE_TTL = 60.0
_estimates: dict[tuple, tuple[float, bool]] = {}


def _prefers_exact(storage: Any, filters: dict, cacheable: bool) -> bool:
    """:func:`prefers_exact_scan` for the ready images matching ``filters``; the answer for
    one filter is reused for ``ESTIMATE_TTL`` seconds (it changes with ANALYZE), and the
    ``EXPLAIN`` statement is compiled once per shape."""
    threshold = int(visualsearch_settings.EXACT_SEARCH_MAX_ROWS)
    if threshold <= 0:
        return False
    if not cacheable:
        return prefers_exact_scan(_filtered(storage, {}, filters))
    model = storage.model
    db = model.objects.db
    frozen = tuple(sorted((name, statements.freeze(value)) for name, value in filters.items()))
    key = (db, model._meta.label, repr(visualsearch_settings.IMAGE_FILTER_FIELDS), frozen)
    cached = _estimates.get(key)
    if cached is None or time.monotonic() - cached[0] >= ESTIMATE_TTL:
        values = _filter_parameters(filters)
        # The statement's key: every filter's name, and the values that are not parameters.
        shape = tuple(item if f"filter:{item[0]}" not in values else item[0] for item in frozen)
        build = partial(_estimate_queryset, storage, filters=filters)
        sql, params = statements.compiled(("estimate", *key[:3], shape), build, values)
        if len(_estimates) > statements.SIZE:
            _estimates.clear()
        cached = _estimates[key] = (time.monotonic(), _plan_rows(sql, params, db))
    return cached[1] <= threshold


def _estimate_queryset(storage: Any, values: dict, *, filters: dict) -> Any:
    return _filtered(storage, values, filters).values("pk")


def prefers_exact_scan(images: Any) -> bool:
    """Whether an exact scan over ``images`` (a filtered queryset) beats the HNSW index.

    True when the planner's row estimate for the filtered rows (``EXPLAIN``: statistics
    only, no rows read) is at most ``EXACT_SEARCH_MAX_ROWS``. Below that, reading the rows
    through the filter's B-tree and sorting them by distance is fast and exact; above it, the
    HNSW index's iterative scan finds enough matches sooner.
    """
    threshold = int(visualsearch_settings.EXACT_SEARCH_MAX_ROWS)
    if threshold <= 0:
        return False
    return estimated_rows(images) <= threshold


def estimated_rows(queryset: Any) -> float:
    """The planner's estimate of the rows ``queryset`` returns (``EXPLAIN``, nothing run)."""
    sql, params = queryset.values("pk").query.sql_with_params()
    return _plan_rows(sql, params, queryset.db)


def _plan_rows(sql: str, params: tuple, db: str) -> float:
    with connections[db].cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return float(plan[0]["Plan"]["Plan Rows"])


def _vector_text(vector: np.ndarray) -> str:
    """The query vector in pgvector's text form: ``'[0.1,0.2,…]'``."""
    # json writes the floats in C: several times faster than pgvector's own text for 512-d.
    return json.dumps(np.asarray(vector, dtype=np.float32).tolist(), separators=(",", ":"))


def _distance(model: type, query: Any, exact: bool = False) -> Any:
    """``embedding <=> query``, or over half-precision copies with ``HNSW_HALFVEC``.

    With ``HNSW_HALFVEC`` the ordering is the expression the index is built on,
    ``embedding::halfvec(n) <=> query::halfvec(n)``, so that the halfvec index serves it.

    An ``exact`` scan reads the rows, not the index, and compares the full vectors (exact,
    and cheaper than converting every row to halfvec). It ranks by
    ``1 + (embedding <#> query)``: for unit vectors (what encoders return and the pipeline
    stores) and a unit ``query`` that is the cosine distance, for one dot product per row
    where ``<=>`` also computes both lengths. The expression also hides the ordering from the
    cosine HNSW index. Measurements: docs/performance.md (Query path).
    """
    if exact:
        return MaxInnerProduct("embedding", query) + Value(1.0)
    if not visualsearch_settings.HNSW_HALFVEC:
        return CosineDistance("embedding", query)
    half = HalfVectorField(dimensions=model._meta.get_field("embedding").dimensions)
    return CosineDistance(Cast("embedding", half), Cast(query, half))


def fetch(queryset, product_field: str, limit: int, exact: bool = False) -> list[tuple]:
    """Evaluate ``queryset[:limit]`` as ``(product pk, distance)`` rows (see :func:`run`);
    ``product_field`` is the rows' lookup of their product."""
    sql, params = queryset.values_list(product_field, "distance")[:limit].query.sql_with_params()
    return run(sql, params, queryset.db, limit, exact)


def run(
    sql: str, params: tuple, db: str, limit: int, exact: bool = False, partial: bool = False
) -> list[tuple]:
    """Run a k-NN statement; through the index with the HNSW settings (SET LOCAL).

    The index settings go in one statement inside the query's transaction; an exact scan
    needs neither them nor the transaction. A numpy vector among ``params`` goes as a vector.
    Statements through the index run without sorting (``enable_sort = off``), which the
    planner would otherwise price below walking the graph for a few thousand rows, or for a
    generic plan that cannot see the status and model values. ``partial``: a partial HNSW
    index serves the filter value (``FILTER_INDEX_EF_SEARCH`` instead of
    ``HNSW_EF_SEARCH``). The statement is then planned for its parameter values even when it
    is prepared (a generic plan cannot use a partial index).
    """
    connection = connections[db]
    if any(isinstance(param, np.ndarray) for param in params):
        statements.vector_parameters(connection)
    if exact:
        return run_with_settings(connection, sql, params, {})
    ef_setting = "FILTER_INDEX_EF_SEARCH" if partial else "HNSW_EF_SEARCH"
    ef_search = min(max(int(getattr(visualsearch_settings, ef_setting)), limit), 1000)
    # enable_sort off: the strategy is chosen here, not by the planner. A prepared
    # statement's generic plan cannot see the status and model values and, on a catalog of
    # a few thousand images, priced "read them all and sort" below the HNSW index: 10-18 ms
    # instead of 0.5-2 at 6,573 x 1280-d (docs/performance.md, Hot paths at 1280 dimensions).
    settings = {
        "hnsw.ef_search": str(ef_search),
        "hnsw.iterative_scan": "relaxed_order",
        "enable_sort": "off",
    }
    if partial:
        settings |= {"plan_cache_mode": "force_custom_plan"}
    return run_with_settings(connection, sql, params, settings)


#: ``__in`` integers above which they travel as one array (:func:`compact_filters`).
MANY_PARAMETERS = 100


def compact_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """``filters`` with each ``…__in`` list of more than ``MANY_PARAMETERS`` integers sent as
    one array parameter, ``IN (SELECT unnest(%s::bigint[]))``, instead of one parameter an
    id: Postgres parsed and planned ``IN ($1, …, $6573)`` in 40-60 ms, and every statement of a
    recommendation carries the filter (docs/performance.md, Hot paths at 1280 dimensions).
    The same rows match."""
    compacted = {}
    for name, value in filters.items():
        if (
            name.endswith("__in")
            and isinstance(value, list | tuple | set | frozenset)
            and len(value) > MANY_PARAMETERS
            and all(type(item) is int for item in value)
        ):
            value = RawSQL("SELECT unnest(%s::bigint[])", (list(value),))
        compacted[name] = value
    return compacted


def run_with_settings(connection: Any, sql: str, params: tuple, settings: dict) -> list[tuple]:
    """``sql`` with ``params`` on ``connection``, under ``settings`` (``SET LOCAL``), rows.

    Without settings the statement runs as it is. Inside a transaction of the caller's
    (``ATOMIC_REQUESTS``) ``SET LOCAL`` would last until that transaction ends: there the
    settings are put back after the statement (:func:`_run_in_savepoint`), so that later
    queries of the request plan as without it.
    """
    if not settings:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    if connection.get_autocommit():  # a transaction of its own: SET LOCAL ends with it
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute(_set_local(settings))
            cursor.execute(sql, params)
            return cursor.fetchall()
    return _run_in_savepoint(connection, sql, params, settings)


def _set_local(settings: dict[str, str]) -> str:
    return "; ".join(f"SET LOCAL {name} = {value}" for name, value in settings.items())


def _run_in_savepoint(connection: Any, sql: str, params: tuple, settings: dict) -> list[tuple]:
    """:func:`run` inside the caller's transaction (``ATOMIC_REQUESTS``): in a savepoint,
    which ``SET LOCAL`` outlives, so the values read before go back after the statement, in
    the round trip that releases the savepoint (as many round trips as a plain savepoint)."""
    sid = transaction.savepoint(using=connection.alias)
    try:
        with connection.cursor() as cursor:
            reads = ", ".join(f"current_setting('{name}', true)" for name in settings)
            cursor.execute(f"SELECT {reads}; {_set_local(settings)}")  # the first result
            previous = cursor.fetchone()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            put_back = pgsql.SQL(", ").join(
                pgsql.SQL("set_config({}, {}, true)").format(pgsql.Literal(name), pgsql.Literal(v))
                for name, v in zip(settings, previous, strict=True)
            )  # None: back to the default, for a setting not defined before
            release = pgsql.SQL(connection.ops.savepoint_commit_sql(sid))
            statement = pgsql.SQL("SELECT {}; {}").format(put_back, release)
            cursor.execute(statement.as_string(connection.connection))
    except Exception:
        transaction.savepoint_rollback(sid, using=connection.alias)
        raise
    return rows


def _best_per_product(rows: list[tuple]) -> list[tuple]:
    best: dict[Any, float] = {}
    for product_id, distance in rows:
        if product_id not in best or distance < best[product_id]:
            best[product_id] = distance
    return sorted(best.items(), key=lambda item: item[1])


def load_products(ranked: list[tuple], queryset: Any = None) -> list:
    pks = [pk for pk, _ in ranked]
    if queryset is None:  # the default manager's statement, compiled once per size
        products = statements.in_bulk(get_product_model(), pks)
    else:
        products = queryset.in_bulk(pks)
    results = []
    for pk, distance in ranked:
        product = products.get(pk)
        if product is not None:
            product.distance = float(distance)
            product.similarity = 1.0 - float(distance)
            results.append(product)
    return results
