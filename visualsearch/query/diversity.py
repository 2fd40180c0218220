"""Spreading picks apart: maximal marginal relevance, and coverage of a sample.

Used by :mod:`visualsearch.query.recommend`. The functions work on unit vectors in numpy; the two
queries that fetch vectors (for given products, or for a sample of them) are here too.
They read the vectors in pgvector's binary form (``vector_send``): parsing the text form of
a few hundred 1280-d vectors in Python takes several times longer than the query.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import random
import uuid
from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
from django.db import connections
from django.db.models import BinaryField, F, Func
from psycopg.pq import Format

from visualsearch.storage import statements
from visualsearch.storage.layout import ready_rows
from visualsearch.storage.lookup import get_product_model


def unit(matrix: np.ndarray) -> np.ndarray:
    """Rows of ``matrix`` scaled to length 1 (zero rows stay zero)."""
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def product_vectors(pks: Iterable[Any], model: type | None = None) -> dict[Any, np.ndarray]:
    """``{pk: unit vector}`` for those of the products ``pks`` that have a ready image.

    One query; a product with several ready images gets the mean of their vectors. ``model``
    reads another embedding model keyed by product instead (the product-text model). For
    integer keys the statement is compiled once per number of pks
    (:mod:`visualsearch.storage.statements`).
    """
    pks = list(pks)
    if not pks:
        return {}
    rows, product_field = ready_rows(model)
    if not all(type(pk) is int for pk in pks):
        return vectors_by_product(rows.filter(**{f"{product_field}__in": pks}), product_field)
    meta = rows.model._meta
    key = ("vectors", rows.db, meta.label, rows.model.embedding_models(), product_field, len(pks))

    def build(values: Any) -> Any:
        return _binary_rows(rows.filter(**{f"{product_field}__in": values["pks"]}), product_field)

    sql, params = statements.compiled(key, build, {"pks": pks})
    return _grouped(_fetch_binary(sql, params, rows.db))


def sample_vectors(
    count: int, *, exclude: Iterable[Any] = (), queryset: Any = None, **filters: Any
) -> dict:
    """``{pk: unit vector}`` of up to ``count`` embedded products, a sample of the catalog.

    :func:`sample_pks` over the products (``queryset``, else the default manager) outside
    ``exclude`` that match ``filters``, a quarter more than needed, then the vectors of those
    with a ready image, through the image table's product index. The draw reads the product
    table, not the image table, which holds the vectors and is many times larger
    (docs/performance.md).
    """
    products = queryset if queryset is not None else get_product_model()._default_manager.all()
    products = products.filter(**filters)
    exclude = list(exclude)
    if exclude:
        products = products.exclude(pk__in=exclude)
    drawn = sample_pks(products, count + count // 4 + 1, seed=exclude)
    return dict(islice(product_vectors(drawn).items(), count))


#: Runs of consecutive primary keys a sample is made of (see :func:`sample_pks`).
SAMPLE_RUNS = 16


def sample_pks(products: Any, count: int, *, seed: Any = ()) -> list:
    """Up to ``count`` primary keys of ``products``, spread over the key range.

    Short runs of keys after ``SAMPLE_RUNS`` evenly spaced points of the range (integer or
    UUID keys), topped up from the first keys: index range scans, never a sort of the
    whole table (``ORDER BY random()``). The points move with the day and ``seed`` (the
    products excluded), so one shopper sees new picks as they go and a crawler sees the
    same page all day.

    One statement: ``products`` is written once, as a ``NOT MATERIALIZED`` CTE that every
    run reads (inlined: each run is still an index range scan), so its parameters (a
    ``pk__in`` filter of thousands of ids, the excluded products) are sent once, not once
    per run (17 copies passed Postgres' 65,535 parameters at about 3,900 ids).
    """
    if count < 1:
        return []
    runs = min(count, SAMPLE_RUNS)
    per_run = -(-count // runs)
    inner, inner_params = products.order_by().values("pk").query.sql_with_params()
    parts, params = [], list(inner_params)
    for i, (start, start_params) in enumerate(_sample_starts(products, runs, seed)):
        run = f"SELECT pk, {i} FROM sample_keys WHERE pk >= {start} ORDER BY pk LIMIT {per_run}"
        parts.append(f"({run})")
        params += start_params
    parts.append(f"(SELECT pk, {runs} FROM sample_keys ORDER BY pk LIMIT {int(count)})")
    sql = f"WITH sample_keys(pk) AS NOT MATERIALIZED ({inner}) " + " UNION ALL ".join(parts)
    with connections[products.db].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    ordered = sorted(rows, key=lambda row: row[1])  # the runs, then the first keys
    return list(dict.fromkeys(pk for pk, _ in ordered))[:count]


def _sample_starts(products: Any, runs: int, seed: Any) -> list[tuple[str, list]]:
    """``runs`` evenly spaced keys of the key range of ``products``' model, from a point that
    ``seed`` and the date choose, as ``(sql, params)`` ([] for keys that are neither integers
    nor UUIDs). Integer keys are computed inside the sample's statement from the table's
    smallest and largest key (two index probes each)."""
    digest = hashlib.sha256(repr((datetime.date.today(), sorted(map(str, seed)))).encode())
    offset = random.Random(digest.digest()).random()
    fractions = [(offset + i / runs) % 1 for i in range(runs)]
    meta = products.model._meta
    kind = meta.pk.get_internal_type()
    if kind == "UUIDField":
        return [("%s", [uuid.UUID(int=int(fraction * 2**128))]) for fraction in fractions]
    if not kind.endswith(("AutoField", "IntegerField")):
        return []
    quote = connections[products.db].ops.quote_name
    key, table = quote(meta.pk.column), quote(meta.db_table)
    span = f"FLOOR((MAX({key}) - MIN({key}) + 1) * %s)"
    start = f"(SELECT CAST(MIN({key}) + {span} AS bigint) FROM {table})"
    return [(start, [fraction]) for fraction in fractions]


def vectors_by_product(rows: Any, attname: str) -> dict[Any, np.ndarray]:
    """``{product pk: unit vector}`` of the ``embedding`` column of ``rows`` (a queryset of
    image or product-text rows), read in binary; several rows of one product are averaged.

    ``attname`` is the rows' product column (``"product_id"``). The rows come back in
    Postgres' binary format: a 1280-d vector is 5 KB of bytes, not 10 KB of hex text that
    Python then decodes (docs/performance.md, Hot paths at 1280 dimensions).
    """
    sql, params = _binary_rows(rows, attname).query.sql_with_params()
    return _grouped(_fetch_binary(sql, params, rows.db))


def _binary_rows(rows: Any, attname: str) -> Any:
    binary = Func(F("embedding"), function="vector_send", output_field=BinaryField())
    return rows.annotate(vector_bytes=binary).values_list(attname, "vector_bytes")


def _fetch_binary(sql: str, params: tuple, db: str) -> list[tuple]:
    with connections[db].cursor() as cursor:
        cursor.cursor.format = Format.BINARY  # this cursor only
        cursor.execute(sql, params)
        return cursor.fetchall()


def _grouped(found: list[tuple]) -> dict[Any, np.ndarray]:
    """``{pk: unit vector}`` of ``(pk, vector_send bytes)`` rows, several rows averaged."""
    pks, vectors = [], []
    for pk, data in found:
        # vector_send: uint16 dimensions, uint16 unused, then big-endian float32 values.
        pks.append(pk)
        vectors.append(np.frombuffer(data, dtype=">f4", offset=4))
    if not vectors:
        return {}
    matrix = np.stack(vectors).astype(np.float32)
    groups: dict[Any, list[int]] = {}
    for index, pk in enumerate(pks):
        groups.setdefault(pk, []).append(index)
    if len(groups) < len(pks):  # products with several images: the mean of their vectors
        matrix = np.stack([matrix[indices].mean(axis=0) for indices in groups.values()])
    return dict(zip(groups, unit(matrix), strict=True))


def maximal_marginal_relevance(
    relevance: np.ndarray, vectors: np.ndarray, count: int, weight: float = 0.5
) -> list[int]:
    """Indices of ``count`` items, each chosen for relevance and for being unlike the others.

    Greedy MMR (Carbonell & Goldstein, 1998): the next item maximises
    ``weight * relevance - (1 - weight) * (highest cosine similarity to the items chosen)``.
    ``vectors`` are unit rows; ``weight = 1`` keeps the order of ``relevance``.
    """
    relevance = np.asarray(relevance, dtype=np.float32)
    closest = np.zeros(len(relevance), dtype=np.float32)
    chosen: list[int] = []
    with single_threaded():
        for _ in range(min(count, len(relevance))):
            score = weight * relevance - (1.0 - weight) * closest
            score[chosen] = -np.inf
            index = int(np.argmax(score))
            chosen.append(index)
            closest = np.maximum(closest, vectors @ vectors[index])
    return chosen


def coverage(candidates: np.ndarray, count: int, covered: np.ndarray | None = None) -> list[int]:
    """Indices of ``count`` candidates that best represent the candidates not yet covered.

    Greedy facility location: each pick maximises the sum, over all candidates, of the gain
    in similarity to their closest pick (or ``covered`` row). On a random sample this picks
    typical members of the large groups first, and skips groups the ``covered`` vectors
    (what the shopper has seen) already stand for. ``candidates`` and ``covered`` are unit rows.
    """
    with single_threaded():
        similarity = candidates @ candidates.T
        if covered is not None and len(covered):
            best = np.maximum((candidates @ covered.T).max(axis=1), 0.0)
        else:
            best = np.zeros(len(candidates), dtype=np.float32)
    chosen: list[int] = []
    for _ in range(min(count, len(candidates))):
        gain = np.maximum(similarity - best[None, :], 0.0).sum(axis=1)
        gain[chosen] = -np.inf
        index = int(np.argmax(gain))
        chosen.append(index)
        best = np.maximum(best, similarity[index])
    return chosen


_controller: Any = None


def single_threaded() -> contextlib.AbstractContextManager:
    """BLAS on one thread for the block (threadpoolctl).

    The products here are small (a few hundred rows): on one thread a 200 x 1280 Gram matrix
    takes about 1 ms, while waking OpenBLAS's idle threads on a busy 2-core web host took
    20-120 ms, and the woken threads then spin beside Postgres (docs/performance.md, Hot
    paths at 1280 dimensions).
    """
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()  # inspects the loaded libraries once
    return _controller.limit(limits=1, user_api="blas")
