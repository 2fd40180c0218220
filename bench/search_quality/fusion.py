"""Fused product vectors against the image vectors alone, on one catalog (bench/quality.py).

:func:`evaluate_fusion` runs :func:`bench.search_quality.metrics.evaluate` twice over the same
queries, through ``similar_products``: once with the fused vectors kept from every surface
(``FUSED_SURFACES = []``: the image vectors, as without fusion) and once with them. Then:

* a sweep of the image weight over the stored parts of the fused vectors: each part at unit
  length, the similarity the weighted mean of the parts' cosines, top k by an exact scan in
  numpy (what the HNSW query returns up to its recall);
* photo searches: a product's own photo (its stored image vector) as the query, against the
  image vectors and against the fused vectors (the photo's text parts borrowed from its
  nearest products by image, the product itself left out of both the borrowing and the
  results), precision@k by articleType on a seeded sample.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from bench.search_quality.metrics import evaluate

DEFAULT_FUSION = '{"image": 0.5, "name": 0.5}'
SWEEP = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0)


def evaluate_fusion(
    products: Any, labels: Mapping[str, Mapping[str, str | None]], args: argparse.Namespace,
    timings: dict[str, float],
) -> dict[str, Any]:  # fmt: skip
    """The report of :func:`evaluate` with scopes ``image_only`` and ``fused`` and the sweep."""
    from django.conf import settings
    from django.test import override_settings

    from visualsearch.ingest.fusion import recipe

    current = recipe()
    clock = time.perf_counter()
    with override_settings(VISUALSEARCH={**settings.VISUALSEARCH, "FUSED_SURFACES": []}):
        image_only = evaluate(products, labels, args.k)
    timings["evaluate_image_only_s"], clock = _lap(clock)
    report = evaluate(products, labels, args.k)
    timings["evaluate_fused_s"], clock = _lap(clock)
    vectors = _fused_vectors(current)
    sweep = weight_sweep(vectors, labels, current, args.k)
    photo = photo_searches(vectors, labels, current, args.k, args.photo_queries, args.seed)
    timings["sweep_and_photo_s"], clock = _lap(clock)
    report["scopes"] = {
        "image_only": image_only["scopes"]["catalog"],
        "fused": report["scopes"]["catalog"],
    }
    report["fusion"] = {
        "recipe": dict(current.weights),
        "model_id": current.model_id,
        "dimensions": current.dimensions,
        "uses_label_columns": False,
        "products_with_fused_vector": len(vectors),
        "weight_sweep_exact": sweep,
        "best_image_weight": max(sweep, key=lambda row: row["precision_at_k"]["articleType"]),
        "photo_search": photo,
    }
    return report


def _lap(clock: float) -> tuple[float, float]:
    now = time.perf_counter()
    return round(now - clock, 1), now


def _fused_vectors(current: Any) -> dict[Any, tuple[str, np.ndarray]]:
    """``{product pk: (external id, fused vector)}`` of the ready fused vectors."""
    from visualsearch.query.fused import product_vectors
    from visualsearch.storage.lookup import get_product_model

    external = dict(get_product_model()._base_manager.values_list("pk", "external_id"))
    vectors = product_vectors(external, current)
    return {pk: (str(external[pk]), vector) for pk, vector in vectors.items()}


def _parts(vectors: Mapping, current: Any) -> tuple[list, np.ndarray, list[np.ndarray]]:
    """External ids, unit image parts and unit text parts (zero rows where absent)."""
    from visualsearch.query.diversity import unit

    ids = [external_id for external_id, _vector in vectors.values()]
    matrix = np.stack([vector for _id, vector in vectors.values()])
    image = unit(matrix[:, : current.image_dimensions])
    texts = matrix[:, current.image_dimensions :].reshape(
        len(ids), len(current.fields), current.text_dimensions
    )
    return ids, image, [unit(texts[:, i]) for i in range(len(current.fields))]


def weight_sweep(vectors: Mapping, labels: Mapping, current: Any, k: int) -> list[dict[str, Any]]:
    """Precision@k by articleType and subCategory for image weights of :data:`SWEEP` (the text
    fields share the rest in the recipe's proportions), by exact scans over the parts."""
    ids, image, texts = _parts(vectors, current)
    weights = dict(current.weights)
    text_total = sum(weights[name] for name in current.fields)
    rows = []
    for share in SWEEP:
        scores = share * (image @ image.T)
        for name, part in zip(current.fields, texts, strict=True):
            scores += (1 - share) * weights[name] / text_total * (part @ part.T)
        np.fill_diagonal(scores, -np.inf)
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        levels = ("articleType", "subCategory")
        precision = {level: _precision(ids, top, labels, level) for level in levels}
        rows.append({"image_weight": share, "precision_at_k": precision})
    return rows


def photo_searches(
    vectors: Mapping, labels: Mapping, current: Any, k: int, count: int, seed: int
) -> dict[str, Any]:
    """Precision@k by articleType of searches by a product's own photo, image vs fused."""
    from visualsearch.query import nearest_products
    from visualsearch.query.fused import nearest, photo_vector

    pks = sorted(vectors)
    sample = random.Random(seed).sample(pks, min(count, len(pks)))
    image_rows = _image_vectors(sample)
    hits: dict[str, list[float]] = {"image_only": [], "fused": []}
    latencies: dict[str, list[float]] = {"image_only": [], "fused": []}
    for pk in sample:
        wanted = labels.get(vectors[pk][0], {}).get("articleType")
        query = image_rows.get(pk)
        if wanted is None or query is None:
            continue
        clock = time.perf_counter()
        plain = nearest_products(query, k, exclude=pk)
        latencies["image_only"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        fused = nearest(photo_vector(query, current, exclude=pk), k, current, exclude=[pk])
        latencies["fused"].append(time.perf_counter() - clock)
        for name, results in (("image_only", plain), ("fused", fused)):
            found = [labels.get(str(p.external_id), {}).get("articleType") for p in results]
            hits[name].append(sum(label == wanted for label in found) / k)
    return {
        "queries": len(hits["fused"]),
        "seed": seed,
        "precision_at_k": {name: round(float(np.mean(v)), 4) for name, v in hits.items()},
        "latency_ms_p50": {
            name: round(float(np.median(v)) * 1000, 2) for name, v in latencies.items()
        },
    }


def _image_vectors(pks: list) -> dict[Any, np.ndarray]:
    from visualsearch.query.diversity import product_vectors

    return product_vectors(pks)


def _precision(ids: list, top: np.ndarray, labels: Mapping, level: str) -> float:
    values = np.array([labels.get(external_id, {}).get(level) for external_id in ids], object)
    valid = values != None  # noqa: E711  (elementwise over an object array)
    return round(float((values[top] == values[:, None])[valid].mean()), 4)
