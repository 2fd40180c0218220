"""k-NN over the fused product vectors (:mod:`visualsearch.ingest.fusion`).

The fused vectors live on the product-text rows; their HNSW index is built on
``fused_embedding::halfvec(n)`` for the recipe's length ``n`` (:func:`ensure_index`), and
queries order by the same expression through :func:`visualsearch.query.knn.fetch` (the
``SET LOCAL`` HNSW settings, iterative scans for filters). Results are product instances with
``distance``/``similarity`` like :func:`visualsearch.query.nearest_products`'.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from django.db import connections, router
from django.db.models import BinaryField, F, Func, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Cast
from pgvector.django import CosineDistance, HalfVectorField
from psycopg import sql as pgsql

from visualsearch.conf import visualsearch_settings
from visualsearch.encoders.base import l2_normalize
from visualsearch.ingest.fusion import Recipe
from visualsearch.models import EmbeddingStatus
from visualsearch.storage.lookup import get_text_model

#: Nearest products (by image) whose words lend a query photo its text parts.
BORROW_FROM = 5


def ready_rows(current: Recipe) -> Any:
    """Product-text rows with a ready fused vector of ``current``."""
    model = get_text_model()
    return model._base_manager.filter(
        fused_status=EmbeddingStatus.READY, fused_model=current.model_id
    ).exclude(fused_embedding=None)


def product_vectors(pks: Iterable[Any], current: Recipe) -> dict[Any, np.ndarray]:
    """``{product pk: fused vector}`` of those of ``pks`` whose fused vector is ready (one
    query, the vectors read in pgvector's binary form)."""
    pks = list(pks)
    if not pks:
        return {}
    attname = _attname()
    binary = Func(F("fused_embedding"), function="vector_send", output_field=BinaryField())
    rows = ready_rows(current).filter(**{f"{attname}__in": pks}).annotate(data=binary)
    return {
        pk: np.frombuffer(bytes(data), dtype=">f4", offset=4).astype(np.float32)
        for pk, data in rows.values_list(attname, "data")
    }


def nearest(
    vector: np.ndarray,
    k: int,
    current: Recipe,
    *,
    exclude: Iterable[Any] = (),
    exact: bool = False,
    queryset: Any = None,
    **filters: Any,
) -> list:
    """The ``k`` products whose fused vectors are nearest to ``vector`` (a fused vector);
    ``exact=True`` reads every matching row instead of the HNSW index."""
    from visualsearch.query.knn import fetch, load_products

    if k < 1:
        return []
    product_field = visualsearch_settings.PRODUCT_FIELD
    rows = ready_rows(current).filter(_dimensions(current))
    if filters:
        rows = rows.filter(**{f"{product_field}__{key}": value for key, value in filters.items()})
    exclude = list(exclude)
    if exclude:
        rows = rows.exclude(**{f"{product_field}__in": exclude})
    half = HalfVectorField(dimensions=current.dimensions)
    query = Value(_text(l2_normalize([vector])[0]))
    distance = CosineDistance(Cast("fused_embedding", half), Cast(query, half))
    found = []
    if not exact:
        found = fetch(rows.annotate(distance=distance).order_by("distance"), product_field, k)
    if exact or (len(found) < k and filters):  # "+ 0" hides the ordering from the index
        scan = rows.annotate(distance=distance + Value(0.0)).order_by("distance")
        found = fetch(scan, product_field, k, exact=True)
    return load_products(found, queryset)


def photo_vector(
    image_vector: np.ndarray, current: Recipe, *, exclude: Any = None, **filters: Any
) -> np.ndarray:
    """A query photo's fused vector: its image part, and text parts borrowed from the mean
    text parts of the ``BORROW_FROM`` products nearest by image (the photo has no words);
    ``exclude``: products not to borrow from."""
    from visualsearch.query.knn import nearest_products

    neighbours = nearest_products(image_vector, BORROW_FROM, exclude=exclude, **filters)
    vectors = product_vectors((product.pk for product in neighbours), current)
    texts: list[np.ndarray | None] = [None] * len(current.fields)
    if vectors:
        parts = np.stack([current.text_parts(vector) for vector in vectors.values()])
        means = parts.mean(axis=0)
        texts = [row if np.linalg.norm(row) > 0 else None for row in means]
    return current.combine(image_vector, texts)


def ensure_index(using: str | None = None) -> str | None:
    """Create the HNSW index of the configured recipe's fused vectors if it is missing
    (``CREATE INDEX IF NOT EXISTS``, partial on the vector length); returns its name."""
    from visualsearch.ingest.fusion import recipe

    current, model = recipe(), get_text_model()
    if current is None or model is None:
        return None
    using = using or router.db_for_write(model)
    table = model._meta.db_table
    name = f"{table[:40]}_fused_{current.dimensions}"
    statement = pgsql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON {table} USING hnsw "
        "((fused_embedding::halfvec({n})) halfvec_cosine_ops) "
        "WITH (m = {m}, ef_construction = {ef}) WHERE vector_dims(fused_embedding) = {n}"
    ).format(
        name=pgsql.Identifier(name),
        table=pgsql.Identifier(table),
        n=pgsql.Literal(current.dimensions),
        m=pgsql.Literal(int(visualsearch_settings.HNSW_M)),
        ef=pgsql.Literal(int(visualsearch_settings.HNSW_EF_CONSTRUCTION)),
    )
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(statement.as_string(connection.connection))
    return name


def _dimensions(current: Recipe) -> RawSQL:
    """The partial index's condition, with the length written into the statement (a
    parameter would hide it from the planner in a generic plan)."""
    from django.db.models import BooleanField

    n, table = int(current.dimensions), get_text_model()._meta.db_table
    return RawSQL(f'vector_dims("{table}".fused_embedding) = {n}', [], output_field=BooleanField())


def _attname() -> str:
    return get_text_model()._meta.get_field(visualsearch_settings.PRODUCT_FIELD).attname


def _text(vector: np.ndarray) -> str:
    from visualsearch.query.knn import _vector_text

    return _vector_text(vector)
