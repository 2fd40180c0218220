"""Search quality of the active encoder over the ready products of the database: precision@k
by label, mAP@k, chance level, recall of HNSW against an exact scan, self-match, latency."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common.stats import interpolated_percentile
from bench.search_quality.labels import LEVELS

SELF_DISTANCE = 1e-4  # a vector's distance to itself, give or take float32 rounding
MAP_NOTE = (
    "mAP@k: mean over queries of the average precision of the top-k list, normalised by "
    "min(k, number of other products with the query's label); queries whose label no other "
    "product has are left out"
)


def average_precision(relevant: Sequence[bool], k: int, total_relevant: int) -> float:
    """AP@k of one ranked list: mean of precision@i at each hit, over ``min(k, total)``."""
    if total_relevant < 1:
        raise ValueError("average precision is undefined without relevant items")
    hits, score = 0, 0.0
    for rank, hit in enumerate(relevant[:k], start=1):
        if hit:
            hits += 1
            score += hits / rank
    return score / min(k, total_relevant)


def evaluate(
    products: Iterable[Any],
    labels: Mapping[str, Mapping[str, str | None]],
    k: int = 10,
    *,
    holdout: Collection[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure search quality of the active encoder over the ready products of the database.

    ``products`` are the catalog's products (with ``external_id``); those with a ready vector
    of the active encoder are the queries. ``labels`` maps external ids to label columns
    (:func:`load_labels`). ``holdout`` (external ids) restricts the queries to those products
    and adds a second scope where only held-out products may be returned. Returns a dict:
    encoder, counts, and per scope the metrics (see ``MAP_NOTE``) and latencies.
    """
    from visualsearch.encoders import get_encoder

    if k < 1:
        raise ValueError("k must be at least 1")
    encoder = get_encoder()
    vectors = ready_vectors()
    pool = ready_catalog(vectors)
    products = list(products)
    queries = [product for product in products if product.pk in vectors]
    levels = [level for level in LEVELS if any(level in row for row in labels.values())]
    report: dict[str, Any] = {
        "encoder": encoder.model_id,
        "dimensions": encoder.dimensions,
        "k": k,
        "products": len(products),
        "ready_products": len(queries),
        "searchable_products": len(pool),
        "labels": {
            level: len({row.get(level) for row in labels.values()} - {None}) for level in levels
        },
        "notes": {"map_at_k": MAP_NOTE},
    }
    scope = dict(labels=labels, levels=levels, k=k, vectors=vectors, progress=progress)
    if holdout is None:
        report["scopes"] = {"catalog": _evaluate_scope("all vs catalog", queries, pool, **scope)}
        return report
    held = {str(external_id) for external_id in holdout}
    held_queries = [product for product in queries if str(product.external_id) in held]
    held_pool = {pk: external_id for pk, external_id in pool.items() if external_id in held}
    report["held_out_products"] = len(held_pool)
    report["scopes"] = {
        "heldout_vs_catalog": _evaluate_scope("held-out vs catalog", held_queries, pool, **scope),
        "heldout_vs_heldout": _evaluate_scope(
            "held-out vs held-out",
            held_queries,
            held_pool,
            filters={"external_id__in": sorted(held_pool.values())},
            **scope,
        ),
    }
    return report


def ready_vectors() -> dict[Any, list[np.ndarray]]:
    """Product pk → its ready image vectors of the active encoder, first image first."""
    from visualsearch.conf import visualsearch_settings
    from visualsearch.storage.lookup import get_image_model

    vectors: dict[Any, list[np.ndarray]] = {}
    rows = (
        get_image_model()
        .objects.ready()
        .values_list(visualsearch_settings.PRODUCT_FIELD, "embedding")
    )  # the model's ordering: position, then pk
    for product_id, vector in rows:
        vectors.setdefault(product_id, []).append(np.asarray(vector, dtype=np.float32))
    return vectors


def ready_catalog(vectors: Mapping[Any, Any]) -> dict[Any, str]:
    """Product pk → external id of every product a query can return (it has a ready vector)."""
    from visualsearch.storage.lookup import get_product_model

    rows = get_product_model()._default_manager.filter(pk__in=list(vectors))
    return {pk: str(external_id) for pk, external_id in rows.values_list("pk", "external_id")}


def _evaluate_scope(
    name: str,
    queries: Sequence[Any],
    pool: Mapping[Any, str],
    *,
    labels: Mapping[str, Mapping[str, str | None]],
    levels: Sequence[str],
    k: int,
    vectors: Mapping[Any, list[np.ndarray]],
    progress: bool,
    filters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every query once through similar_products, an exact scan and the self-match check."""
    from visualsearch.encoders.base import l2_normalize
    from visualsearch.ingest import fusion
    from visualsearch.query import fused, nearest_products, similar_products

    filters = dict(filters or {})
    current = fusion.serves("similar")
    fused_vectors = {} if current is None else fused.product_vectors(pool, current)

    def label(external_id: Any, level: str) -> str | None:
        return labels.get(str(external_id), {}).get(level)

    counts = {level: Counter(label(eid, level) for eid in pool.values()) for level in levels}
    precision: dict[str, list[float]] = {level: [] for level in levels}
    chance: dict[str, list[float]] = {level: [] for level in levels}
    aps: list[float] = []
    recalls, latencies = [], []
    self_match = self_first = short = 0
    started = time.perf_counter()
    for product in tqdm(queries, desc=name, unit="query", file=sys.stderr, disable=not progress):
        external_id = str(product.external_id)
        before = time.perf_counter()
        results = similar_products(product, k, **filters)
        latencies.append((time.perf_counter() - before) * 1000)
        short += len(results) < k
        in_pool = product.pk in pool
        for level in levels:
            wanted = label(external_id, level)
            if wanted is None:
                continue
            relevant = [label(result.external_id, level) == wanted for result in results]
            precision[level].append(sum(relevant) / k)  # missing results count as misses
            others = counts[level][wanted] - in_pool
            chance[level].append(others / max(len(pool) - in_pool, 1))
            if level == "articleType" and others > 0:
                aps.append(average_precision(relevant, k, others))
        own = vectors[product.pk]
        query = l2_normalize(np.mean(np.stack(own), axis=0, keepdims=True))[0]
        fused_vector = None if current is None else fused_vectors.get(product.pk)
        if fused_vector is not None:  # similar_products ranked by the fused vectors
            exact = fused.nearest(fused_vector, k, current, exclude=[product.pk], exact=True)
        else:
            exact = nearest_products(query, k, exclude=product, exact=True, **filters)
        if exact:
            found = {result.pk for result in results} & {result.pk for result in exact}
            recalls.append(len(found) / len(exact))
        first, tied = _finds_itself(product, nearest_products(own[0], k, **filters))
        self_first += first
        self_match += tied
    n = len(queries)
    return {
        "queries": n,
        "searchable_products": len(pool),
        "precision_at_k": {level: _mean(values) for level, values in precision.items()},
        "chance_precision_at_k": {level: _mean(values) for level, values in chance.items()},
        "map_at_k": {"articleType": _mean(aps)} if "articleType" in levels else {},
        "map_queries": len(aps),
        "recall_at_k_hnsw_vs_exact": _mean(recalls),
        "self_match": round(self_match / n, 4) if n else None,
        "self_match_strictly_first": round(self_first / n, 4) if n else None,
        "short_result_lists": short,
        "latency_ms": {
            "p50": round(interpolated_percentile(latencies, 0.5), 2) if n else None,
            "p95": round(interpolated_percentile(latencies, 0.95), 2) if n else None,
            "mean": _mean(latencies, 2),
        },
        "seconds": round(time.perf_counter() - started, 1),
    }


def _finds_itself(product: Any, results: Sequence[Any]) -> tuple[bool, bool]:
    """(first result is the product at distance ≈ 0, the product is among the ≈ 0 hits).

    The second form tolerates exact duplicates (another product with the same photo) that
    tie with the product at distance 0 and may come first.
    """
    first = bool(results) and results[0].pk == product.pk
    first = first and results[0].distance < SELF_DISTANCE
    for result in results:
        if result.distance >= SELF_DISTANCE:
            break
        if result.pk == product.pk:
            return first, True
    return first, False


def _mean(values: Sequence[float], digits: int = 4) -> float | None:
    return round(float(np.mean(values)), digits) if len(values) else None
