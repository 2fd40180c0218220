"""Paraphrased text queries: what query expansion and the fused vectors do for them.

    .venv/bin/python bench/paraphrase.py          # the demo database (make demo), FUSION on

The queries are those of ``bench/text_search.py`` (``"<colour> <type>"``, ``"<gender> <type>"``
and ``"<colour> <everyday word for the type>"``: "black tee", "brown purse"), relevant when a
product has both labels. Every ranking is an exact scan in numpy over the vectors stored in
the database (what the HNSW queries return up to their recall):

* ``semantic``: the query's MiniLM vector against the product-text vectors (TEXT_FIELDS), as
  text search's semantic half;
* ``names``: against the name parts of the fused vectors (the name alone);
* ``rocchio mN``: the query vector plus the mean text vector of its N best semantic hits,
  searched again (pseudo-relevance feedback: expansion from the catalog's own text);
* ``fused prf mN``: the mean fused vector (photo and name) of the N best semantic hits,
  against the fused vectors; ``rrf semantic + fused prf mN``: both rankings fused by
  reciprocal rank (k = 60);
* ``fused query + images mN``: a fused query of the words and the mean photo of the N best
  semantic hits.

Also: for the paraphrased family, the share of the semantic top k with the right type and
with the right colour, and the type's share per article type. Writes
``bench/results/paraphrase.json``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402
from bench.common.machine import machine  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.text_search import PARAPHRASED, build_queries  # noqa: E402

FEEDBACK = (5, 10, 20)


def rrf(*orders: np.ndarray, k: int = 60, depth: int = 100) -> list[int]:
    scores: dict[int, float] = {}
    for order in orders:
        for rank, index in enumerate(order[:depth]):
            scores[int(index)] = scores.get(int(index), 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda index: -scores[index])


def rankings(query: np.ndarray, texts: np.ndarray, fused: np.ndarray, current) -> dict:
    """Every ranking of one query vector, as arrays of row indexes, best first."""
    from visualsearch.query.diversity import unit

    images, names = (
        unit(fused[:, : current.image_dimensions]),
        unit(fused[:, current.image_dimensions :]),
    )
    semantic = np.argsort(-(texts @ query))
    out = {"semantic": semantic, "names": np.argsort(-(names @ query))}
    for m in FEEDBACK:
        top = semantic[:m]
        out[f"rocchio m{m}"] = np.argsort(-(texts @ unit(query + texts[top].mean(0))))
        out[f"fused prf m{m}"] = np.argsort(-(fused @ unit(fused[top].mean(0))))
        out[f"rrf semantic + fused prf m{m}"] = rrf(semantic, out[f"fused prf m{m}"])
        photo = unit(images[top].mean(0))
        mixed = current.combine(photo, [query])
        out[f"fused query + images m{m}"] = np.argsort(-(fused @ mixed))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DATA_DIR / "products.csv")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--min-relevant", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "paraphrase.json")
    args = parser.parse_args(argv)
    setup_django()
    from shop.catalog.models import Product, ProductText
    from visualsearch.encoders import get_text_encoder
    from visualsearch.ingest.fusion import recipe
    from visualsearch.query.diversity import unit
    from visualsearch.query.fused import product_vectors

    current = recipe()
    if current is None:
        sys.exit("FUSION is off: set VISUALSEARCH_FUSION or use the demo shop's settings.")
    started = time.perf_counter()
    with args.csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_id = {row["id"]: row for row in rows}
    external = dict(Product.objects.values_list("pk", "external_id"))
    text_vectors = dict(ProductText.objects.ready().values_list("product_id", "embedding"))
    fused_vectors = product_vectors(list(text_vectors), current)
    pks = [pk for pk in sorted(fused_vectors) if external.get(pk) in by_id]
    texts = unit(np.stack([np.asarray(text_vectors[pk], np.float32) for pk in pks]))
    fused = unit(np.stack([fused_vectors[pk] for pk in pks]))
    labels = [by_id[external[pk]] for pk in pks]
    queries = build_queries(rows, args.min_relevant)
    vectors = unit(get_text_encoder().encode_texts([q["text"] for q in queries]))
    scores: dict[str, dict[str, list[float]]] = {}
    parts = {"type": [], "colour": []}
    per_type: dict[str, list[float]] = {}
    for query, vector in zip(queries, vectors, strict=True):
        family = scores.setdefault(query["family"], {})
        for name, order in rankings(vector, texts, fused, current).items():
            top = order[: args.k]
            hits = [all(labels[i].get(c) == v for c, v in query["labels"].items()) for i in top]
            family.setdefault(name, []).append(float(np.mean(hits)))
        if query["family"] == PARAPHRASED:
            top = np.argsort(-(texts @ vector))[: args.k]
            kind = query["labels"]["articleType"]
            type_share = np.mean([labels[i]["articleType"] == kind for i in top])
            colour = query["labels"]["baseColour"]
            parts["type"].append(type_share)
            parts["colour"].append(np.mean([labels[i]["baseColour"] == colour for i in top]))
            per_type.setdefault(kind, []).append(type_share)
    precision = {
        family: {name: round(float(np.mean(values)), 3) for name, values in methods.items()}
        for family, methods in scores.items()
    }
    from django.conf import settings

    report = {
        "database": settings.DATABASES["default"]["NAME"],
        "k": args.k,
        "queries": {family: len(next(iter(m.values()))) for family, m in scores.items()},
        "products": len(pks),
        "fusion": {"recipe": dict(current.weights), "model_id": current.model_id},
        "precision_at_k": precision,
        "paraphrased_semantic_top_k": {
            "right_type": round(float(np.mean(parts["type"])), 3),
            "right_colour": round(float(np.mean(parts["colour"])), 3),
            "right_type_by_article_type": {
                kind: round(float(np.mean(v)), 2) for kind, v in sorted(per_type.items())
            },
        },
        "machine": machine(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    for family, methods in precision.items():
        print(family)
        for name, value in methods.items():
            print(f"  {name:<34}{value:.3f}")
    print("paraphrased, semantic top k:", report["paraphrased_semantic_top_k"])
    write_json(args.out, report)


if __name__ == "__main__":
    main()
