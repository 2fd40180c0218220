"""The query paths compared: raw pgvector SQL (the bare statement, and the same work as each
app path) and the app's ``nearest_products`` / ``similar_products``."""

from __future__ import annotations

from bench.query.database import raw_connection
from bench.query.synthetic import MODEL_ID


def raw_sql(
    kind: str, d: int, filtered: bool = False, exact: bool = False, mean=False, copy=False
) -> str:
    """The k-NN statement; with ``mean`` the query vector is the mean of product ``me``'s
    vectors (a subquery, as ``similar_products`` sends it), else the parameter ``q``.
    ``filtered`` keeps category ``c``: through the product (a join), or with ``copy`` through
    the image row's copy of it (``IMAGE_FILTER_FIELDS``)."""
    column, query = "embedding", "%(q)s"
    ready = "{0}.embedding_status = 'ready' AND {0}.embedding_model = %(model)s"
    if mean:
        query = (
            "(SELECT l2_normalize(AVG(m.embedding)) FROM catalog_productimage m"
            f" WHERE m.product_id = %(me)s AND {ready.format('m')} GROUP BY m.product_id)"
        )
    if kind == "halfvec" and not exact:  # an exact scan compares the full vectors (as the app)
        column, query = f"embedding::halfvec({d})", f"{query}::halfvec({d})"
    # An exact scan ranks as the app does: 1 + inner product, the cosine distance of unit
    # vectors, which the cosine HNSW index cannot serve.
    distance = f"1 + ({column} <#> {query})" if exact else f"{column} <=> {query}"
    order = distance
    join = " JOIN catalog_product p ON p.id = i.product_id" if filtered and not copy else ""
    where = f" AND {'i' if copy else 'p'}.category_id = %(c)s" if filtered else ""
    if mean:
        where += f" AND {query} IS NOT NULL"
    return (
        f"SELECT i.product_id, {distance} FROM catalog_productimage i{join}"
        f" WHERE {ready.format('i')} AND i.product_id <> %(me)s{where}"
        f" ORDER BY {order} LIMIT %(k)s"
    )


class Raw:
    """Raw pgvector SQL on the Django connection's psycopg connection (autocommit)."""

    def __init__(self, kind: str, d: int):
        self.conn = raw_connection()
        self.kind, self.d = kind, d
        self.model = MODEL_ID.format(dimensions=d)

    def configure(self, ef_search: int, iterative: str = "off", sort: bool = True) -> None:
        self.conn.execute(f"SET hnsw.ef_search = {ef_search}")
        self.conn.execute(f"SET hnsw.iterative_scan = {iterative}")
        self.conn.execute(f"SET enable_sort = {'on' if sort else 'off'}")  # off: partial index

    def query(self, vector, me, k=10, category=None, exact=False, copy=False) -> list[int]:
        from pgvector import HalfVector, Vector

        q = HalfVector(vector) if self.kind == "halfvec" and not exact else Vector(vector)
        filtered = category is not None
        sql = raw_sql(self.kind, self.d, filtered=filtered, exact=exact, copy=copy)
        params = {"q": q, "model": self.model, "me": me, "k": k, "c": category}
        rows = self.conn.execute(sql, params, prepare=False).fetchall()
        return [pid for pid, _ in rows]

    def similar(self, me, ef_search, k=10) -> list[int]:
        """What ``similar_products`` does, in raw SQL: the k-NN statement whose query vector is
        the mean of the product's vectors (a subquery), as :meth:`same_work` sends it."""
        params = {"model": self.model, "me": me, "k": 4 * k, "c": None}
        return self.same_work(raw_sql(self.kind, self.d, mean=True), params, ef_search, k)

    def nearest(self, vector, me, ef_search, k=10) -> list[int]:
        """What ``nearest_products`` does, in raw SQL: the k-NN statement with the query
        vector as a parameter, as :meth:`same_work` sends it."""
        from pgvector import HalfVector, Vector

        q = HalfVector(vector) if self.kind == "halfvec" else Vector(vector)
        params = {"q": q, "model": self.model, "me": me, "k": 4 * k, "c": None}
        return self.same_work(raw_sql(self.kind, self.d), params, ef_search, k)

    def same_work(self, sql: str, params: dict, ef_search: int, k: int) -> list[int]:
        """The work around the app's k-NN statement: in a transaction with ``SET LOCAL``, the
        statement (overfetch x4, best image per product), then load the products."""
        with self.conn.transaction():
            self.conn.execute(
                f"SET LOCAL hnsw.ef_search = {max(ef_search, 4 * k)};"
                " SET LOCAL hnsw.iterative_scan = relaxed_order"
            )
            rows = self.conn.execute(sql, params).fetchall()
        ids = list(dict.fromkeys(pid for pid, _ in rows))[:k]
        self.conn.execute("SELECT * FROM catalog_product WHERE id = ANY(%s)", [ids]).fetchall()
        return ids


def app_nearest(vector, me, k=10, **filters) -> list[int]:
    from visualsearch.query import nearest_products

    return [p.pk for p in nearest_products(vector, k, exclude=me, **filters)]


def app_similar(me, k=10, **filters) -> list[int]:
    from shop.catalog.models import Product
    from visualsearch.query import similar_products

    return [p.pk for p in similar_products(Product(pk=me), k, **filters)]


def app_settings(**values):
    from django.conf import settings
    from django.test.utils import override_settings

    return override_settings(VISUALSEARCH={**settings.VISUALSEARCH, **values})
