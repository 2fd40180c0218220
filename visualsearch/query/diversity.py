"""Spreading picks apart: maximal marginal relevance, and coverage of a sample.

Used by :mod:`visualsearch.query.recommend`. The functions work on unit vectors in numpy; the two
queries that fetch vectors (for given products, or for a sample of them) are here too.
They read the vectors in pgvector's binary form (``vector_send``): parsing the text form of
a few hundred 1280-d vectors in Python takes several times longer than the query.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import uuid
from collections.abc import Iterable
from itertools import islice
from typing import Any

import numpy as np
from django.db import connections
from django.db.models import BinaryField, F, Func, Value
from django.db.models.expressions import RawSQL

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
    reads another embedding model keyed by product instead (the product-text model).
    """
    pks = list(pks)
    if not pks:
        return {}
    rows, product_field = ready_rows(model)
    return vectors_by_product(rows.filter(**{f"{product_field}__in": pks}), product_field)


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
    """
    if count < 1:
        return []
    runs = min(count, SAMPLE_RUNS)
    per_run = -(-count // runs)
    keys = products.order_by("pk")
    parts = [
        keys.filter(pk__gte=start).annotate(sample_run=Value(i)).values_list("pk", "sample_run")
        for i, start in enumerate(_sample_starts(products, runs, seed))
    ]
    parts = [part[:per_run] for part in parts]
    parts.append(keys.annotate(sample_run=Value(runs)).values_list("pk", "sample_run")[:count])
    rows = parts[0].union(*parts[1:], all=True) if len(parts) > 1 else parts[0]
    ordered = sorted(rows, key=lambda row: row[1])  # the runs, then the first keys
    return list(dict.fromkeys(pk for pk, _ in ordered))[:count]


def _sample_starts(products: Any, runs: int, seed: Any) -> list:
    """``runs`` evenly spaced keys of the key range of ``products``' model, from a point that
    ``seed`` and the date choose ([] for keys that are neither integers nor UUIDs). Integer
    keys are computed inside the sample's statement from the table's smallest and largest
    key (two index probes each)."""
    digest = hashlib.sha256(repr((datetime.date.today(), sorted(map(str, seed)))).encode())
    offset = random.Random(digest.digest()).random()
    fractions = [(offset + i / runs) % 1 for i in range(runs)]
    meta = products.model._meta
    kind = meta.pk.get_internal_type()
    if kind == "UUIDField":
        return [uuid.UUID(int=int(fraction * 2**128)) for fraction in fractions]
    if not kind.endswith(("AutoField", "IntegerField")):
        return []
    quote = connections[products.db].ops.quote_name
    key, table = quote(meta.pk.column), quote(meta.db_table)
    span = f"FLOOR((MAX({key}) - MIN({key}) + 1) * %s)"
    start = f"SELECT CAST(MIN({key}) + {span} AS bigint) FROM {table}"
    return [RawSQL(start, [fraction], output_field=meta.pk) for fraction in fractions]


def vectors_by_product(rows: Any, attname: str) -> dict[Any, np.ndarray]:
    """``{product pk: unit vector}`` of the ``embedding`` column of ``rows`` (a queryset of
    image or product-text rows), read in binary; several rows of one product are averaged.

    ``attname`` is the rows' product column (``"product_id"``).
    """
    binary = Func(F("embedding"), function="vector_send", output_field=BinaryField())
    pks, vectors = [], []
    for pk, data in rows.annotate(vector_bytes=binary).values_list(attname, "vector_bytes"):
        # vector_send: uint16 dimensions, uint16 unused, then big-endian float32 values.
        pks.append(pk)
        vectors.append(np.frombuffer(bytes(data), dtype=">f4", offset=4))
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
