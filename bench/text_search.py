"""Text search quality on the labelled catalog: full-text, semantic and hybrid (RRF).

    .venv/bin/python bench/text_search.py                 # the demo database, as it is
    .venv/bin/python bench/text_search.py --embed         # (re-)embed every product text first
    .venv/bin/python bench/text_search.py --csv PATH --k 10 --min-relevant 10
    .venv/bin/python bench/text_search.py --bridge .cache/visualsearch-bridge.npz   # + the bridge

Runs against the demo database (default settings: the embedded Postgres, database
``visualsearch``, or ``DATABASE_URL``), which ``make demo`` fills with the 6,573 products of
``../shared/data/fashion-products`` and their text vectors. Queries are built from the CSV's
labels: ``"<baseColour> <articleType>"`` and ``"<gender> <articleType>"`` for every pair of
labels that at least ``--min-relevant`` products share; a result is relevant when its product
has both labels (joined by ``Product.external_id``). Reports precision@k (missing results
count as misses) and query latency for each method:

* ``keyword (old page)``: what the search page did before: every word ``icontains`` the name
  or description, by name;
* ``full-text``: Postgres full-text search over the GIN index (``visualsearch.query.hybrid``);
* ``semantic``: the text encoder's query vector, nearest product-text vectors (HNSW);
* ``hybrid RRF``: both fused by reciprocal rank fusion (what ``search(text=…)`` serves).

With ``--bridge FILE`` (from ``manage.py visualsearch_bridge``, trained for the demo's text and
image models), three more:

* ``bridge (image)``: the photos ranked by the bridged text vector alone (HNSW);
* ``hybrid + bridge``: that image ranking fused with the hybrid ranking by reciprocal rank
  fusion, as ``search(text=…)`` does with ``TEXT_BRIDGE`` set;
* ``bridge (held-out photos)`` and ``bridge (seen photos)``: the bridged ranking over the
  products the bridge never trained on only (its held-out split), and over as many products
  drawn from its training split: whether it needs to have seen a product's photo (equal
  gallery sizes, so equal ceilings; neither compares with the whole-catalog columns).

Prints a table and writes ``bench/results/text-search.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402
from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.common.stats import interpolated_percentile, timed  # noqa: E402

CSV = DATA_DIR / "products.csv"
FAMILIES = {
    "colour + type": ("baseColour", "articleType"),
    "gender + type": ("gender", "articleType"),
}
#: Hand-written everyday words for article types, for a third family of queries that do not
#: repeat the catalog's own vocabulary ("<baseColour> <paraphrase>", relevant by the same
#: labels): vocabulary mismatch, where full-text search has little to match.
PARAPHRASES = {
    "Tshirts": "tee",
    "Casual Shoes": "sneakers",
    "Sports Shoes": "running trainers",
    "Watches": "wristwatch",
    "Handbags": "purse",
    "Heels": "stilettos",
    "Sunglasses": "shades",
    "Flip Flops": "beach slippers",
    "Sweaters": "pullover",
    "Wallets": "billfold",
    "Trousers": "pants",
    "Jeans": "denim pants",
    "Jackets": "coat",
    "Backpacks": "rucksack",
    "Briefs": "underpants",
    "Caps": "baseball hat",
    "Ties": "necktie",
    "Track Pants": "joggers",
    "Tops": "blouse",
}
PARAPHRASED = "colour + paraphrase"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=CSV, help="labelled catalog CSV")
    parser.add_argument("--k", type=int, default=10, help="results per query (precision@k)")
    parser.add_argument("--min-relevant", type=int, default=10, help="products per label pair")
    parser.add_argument("--embed", action="store_true", help="re-embed every product text first")
    parser.add_argument(
        "--rrf-k", type=int, nargs="*", default=[10, 200], help="RRF k values to compare too"
    )
    parser.add_argument("--bridge", type=Path, help="text bridge file to measure too")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "text-search.json")
    return parser.parse_args(argv)


def build_queries(rows: list[dict], min_relevant: int) -> list[dict]:
    """One query per label pair shared by ``min_relevant`` products or more (and one with the
    paraphrased type, where there is one)."""
    queries = []
    for family, columns in FAMILIES.items():
        counts = Counter(tuple(row[column] for column in columns) for row in rows)
        for values, count in sorted(counts.items()):
            if count >= min_relevant and all(v and v != "NA" for v in values):
                labels = dict(zip(columns, values, strict=True))
                queries.append({"family": family, "text": " ".join(values), "labels": labels})
                if family == "colour + type" and values[1] in PARAPHRASES:
                    text = f"{values[0]} {PARAPHRASES[values[1]]}"
                    queries.append({"family": PARAPHRASED, "text": text, "labels": labels})
    return queries


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_django()
    from django.db.models import Q

    from shop.catalog.models import Product, ProductText
    from visualsearch.conf import visualsearch_settings
    from visualsearch.encoders import get_text_encoder
    from visualsearch.encoders.bridge import load_bridge
    from visualsearch.ingest.texts import embed_texts, product_batches, sync_texts
    from visualsearch.learning.adapt import is_held_out
    from visualsearch.query import nearest_products
    from visualsearch.query.hybrid import (
        fulltext_ranking,
        reciprocal_rank_fusion,
        semantic_ranking,
        text_ranking,
    )

    with args.csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = {row["id"]: row for row in rows}
    pk_labels = {
        pk: labels[external_id]
        for pk, external_id in Product.objects.values_list("pk", "external_id")
        if external_id in labels
    }
    if not pk_labels:
        sys.exit("No product of the CSV is in the database: run `make demo` first.")
    encoder = get_text_encoder()
    timings: dict[str, Any] = {}
    if args.embed:
        started = time.perf_counter()
        changed = sum(len(sync_texts(batch)) for batch in product_batches())
        timings["index_words_s"] = round(time.perf_counter() - started, 2)
        pks = list(ProductText.objects.order_by("pk").values_list("pk", flat=True))
        encoder.encode_texts(["load the model"])  # loading is not embedding
        started = time.perf_counter()
        for start in range(0, len(pks), 256):
            embed_texts(pks[start : start + 256], force=True)
        seconds = time.perf_counter() - started
        timings.update(
            texts_embedded=len(pks),
            rows_reindexed=changed,
            embed_s=round(seconds, 2),
            texts_per_s=round(len(pks) / seconds, 1),
            load_average=load_average()[0],
            date=time.strftime("%Y-%m-%d %H:%M"),
        )
        print(f"Embedded {len(pks)} product texts in {seconds:.1f} s ({len(pks) / seconds:.0f}/s).")
    elif args.out.exists():  # keep the embedding timings of the last --embed run
        timings = json.loads(args.out.read_text()).get("timings", {})
    ready = ProductText.objects.ready().count()
    if ready < len(pk_labels):
        print(f"Warning: only {ready} of {len(pk_labels)} products have a text vector.")

    def keyword(text: str, k: int) -> list:
        condition = Q()
        for word in text.split()[:10]:
            condition &= Q(name__icontains=word) | Q(description__icontains=word)
        return list(Product.objects.filter(condition).values_list("pk", flat=True)[:k])

    bridge, galleries = None, {}
    if args.bridge:
        bridge = load_bridge(args.bridge)  # refuses a file trained for other models
        meta = bridge.meta
        split: dict[bool, list] = {True: [], False: []}
        for pk, key in Product.objects.order_by("pk").values_list("pk", meta["split_key"]):
            split[is_held_out(key, meta["holdout"], meta["split_seed"])].append(pk)
        if split[True]:
            galleries = {
                "bridge (held-out photos)": split[True],
                "bridge (seen photos)": random.Random(0).sample(split[False], len(split[True])),
            }
    light = Product._base_manager.only("pk")

    def image_ranking(vector: np.ndarray, limit: int, **filters: Any) -> list:
        return [p.pk for p in nearest_products(vector, limit, queryset=light, **filters)]

    k = args.k
    candidates = max(int(visualsearch_settings.RRF_CANDIDATES), k)
    rrf_ks = sorted({int(visualsearch_settings.RRF_K), *args.rrf_k})
    queries = build_queries(rows, args.min_relevant)
    keyword("Blue Tshirts", k)  # warm up (model, connection, caches)
    text_ranking("Blue Tshirts", candidates)
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    latency: dict[str, list[float]] = defaultdict(list)

    def timed_as(name: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        ms, value = timed(call, *args, **kwargs)
        latency[name].append(ms)
        return value

    for query in queries:
        text = query["text"]
        # What search(text=…) does (visualsearch.query.hybrid.text_ranking), one step at a time:
        # each ranking fetched once, RRF_CANDIDATES deep; its top k is that method's answer.
        found = {"keyword (old page)": timed_as("keyword (old page)", keyword, text, k)}
        vector = timed_as("query encoding", encoder.encode_texts, [text])[0]
        fulltext = timed_as("full-text", fulltext_ranking, text, candidates)
        semantic = timed_as("semantic, database", semantic_ranking, text, candidates, vector=vector)
        found["full-text"] = fulltext
        found["semantic"] = semantic
        for rrf_k in rrf_ks:
            fused = reciprocal_rank_fusion([fulltext, semantic], k=rrf_k)
            found[f"hybrid RRF k={rrf_k}"] = [pk for pk, _score in fused]
        latency["semantic"].append(
            latency["query encoding"][-1] + latency["semantic, database"][-1]
        )
        latency["hybrid RRF"].append(latency["semantic"][-1] + latency["full-text"][-1])
        if bridge is not None:
            # What search(text=…) adds with TEXT_BRIDGE set (query.hybrid.hybrid_search).
            bridged = timed_as("bridge projection", bridge.apply, vector[None, :])[0]
            images = timed_as("bridge, database", image_ranking, bridged, candidates)
            hybrid = found[f"hybrid RRF k={visualsearch_settings.RRF_K}"]
            fused = reciprocal_rank_fusion([images, hybrid], k=int(visualsearch_settings.RRF_K))
            found["bridge (image)"] = images
            found["hybrid + bridge"] = [pk for pk, _score in fused]
            bridge_ms = latency["bridge projection"][-1] + latency["bridge, database"][-1]
            latency["bridge (image)"].append(latency["query encoding"][-1] + bridge_ms)
            latency["hybrid + bridge"].append(latency["hybrid RRF"][-1] + bridge_ms)
            for name, gallery in galleries.items():
                found[name] = timed_as(name, image_ranking, bridged, k, pk__in=gallery)
        for name, pks in found.items():
            hits = sum(
                all(
                    pk_labels.get(pk, {}).get(col) == value
                    for col, value in query["labels"].items()
                )
                for pk in pks[:k]
            )
            scores[name][query["family"]].append(hits / k)
            if query["family"] in FAMILIES:
                scores[name]["all"].append(hits / k)
    methods = list(scores)

    families = [*FAMILIES, "all", PARAPHRASED]
    counts = {family: len(scores["full-text"][family]) for family in families}
    header = f"{'method':<26}" + "".join(f"{f'{f} ({counts[f]})':>26}" for f in families)
    print(f"\nprecision@{k}, {len(pk_labels)} products, text model {encoder.model_id}")
    print(header + f"{'p50 ms':>9}{'p95 ms':>9}")
    results = {}
    for name in methods:
        row = {family: round(float(np.mean(scores[name][family])), 3) for family in families}
        timing = latency[name.split(" k=")[0]]
        p50, p95 = interpolated_percentile(timing, 0.5), interpolated_percentile(timing, 0.95)
        results[name] = {
            "precision_at_k": row,
            "latency_ms": {"p50": round(p50, 2), "p95": round(p95, 2)},
        }
        print(
            f"{name:<26}"
            + "".join(f"{row[f]:>26.3f}" for f in families)
            + f"{p50:>9.1f}{p95:>9.1f}"
        )

    parts = {}
    for name in ("query encoding", "semantic, database", "bridge projection", "bridge, database"):
        if not latency[name]:
            continue
        p50 = interpolated_percentile(latency[name], 0.5)
        p95 = interpolated_percentile(latency[name], 0.95)
        parts[name] = {"p50": round(p50, 2), "p95": round(p95, 2)}
        print(f"  of which {name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms")

    verbatim = {
        column: round(
            sum(row[column].lower() in row["productDisplayName"].lower() for row in rows)
            / len(rows),
            3,
        )
        for column in ("articleType", "baseColour", "gender")
    }
    report = {
        "k": k,
        "products": len(pk_labels),
        "products_with_text_vector": ready,
        "queries": counts,
        "min_relevant": args.min_relevant,
        "text_model": encoder.model_id,
        "text_fields": list(visualsearch_settings.TEXT_FIELDS),
        "text_search_config": visualsearch_settings.TEXT_SEARCH_CONFIG,
        "rrf_k": int(visualsearch_settings.RRF_K),
        "rrf_candidates": candidates,
        "methods": results,
        "latency_parts_ms": parts,
        "load_average": load_average()[0],
        "label_verbatim_in_name": verbatim,
        "bridge": None
        if bridge is None
        else {
            "file": str(args.bridge),
            "digest": bridge.digest[:12],
            "gallery_products": {name: len(pks) for name, pks in galleries.items()},
            # The label queries are label words, not products: no query was trained on. Their
            # relevant products are in both splits; the held-out numbers of the training run
            # (a product's own name finding its own photo) are the generalisation measure.
            **{key: value for key, value in bridge.meta.items() if key != "kind"},
        },
        "timings": timings,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"\nLabel words verbatim in product names: {verbatim}")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
