"""Relevance cut-off (visualsearch.query.cutoff) against fixed list lengths, on the dev catalog.

    VISUALSEARCH_DB_NAME=quality_fashion_products_products_0cd27c42_efficientnet DJANGO_DEBUG=1 \\
        .venv/bin/python bench/cutoff.py
    .venv/bin/python bench/cutoff.py --sample 1500 --seed 0   # a seeded sample of the queries
    .venv/bin/python bench/cutoff.py --fusion '{"image": 0.5, "name": 0.5}'  # fused vectors

Reads a database that ``bench/quality.py`` imported and embedded (read-only: no migration, no
writes). Every product with a ready vector (or a seeded sample) is a query: its similar-products
list of ``--k`` results (50) through ``visualsearch.query.similar_products``, the product
page's query. A result is relevant when it has the query's ``articleType`` (labels from the
catalog CSV, joined by ``Product.external_id``). Then, without querying again, for fixed
lengths and for each cut-off rule and parameter (applied to the first ``base`` results of
each list, for base = 50 and the API's default limit 12):

* ``mean_length`` (and median, share of lists cut), ``precision`` (relevant kept / kept);
* ``recall``: relevant kept / min(base, other products with the label), the share of what a
  list of that length could hold; ``list_recall``: relevant kept / relevant in the base list;
* ``f1``: the mean over queries of the harmonic mean of precision and recall;
* ``fixed_at_same_length``: precision, recall and F1 of fixed lengths interpolated at the
  rule's mean length — what a cut-off must beat to be worth more than a smaller ``limit`` —
  and ``precision_lift``, the rule's precision minus that;
* ``dropped_precision`` (share of relevant results among those dropped), ``short_share``
  (lists cut to 2 or fewer), and the metrics on ``rare_labels`` queries (fewer than ``base``
  other products share their label: lists that must run out of relevant results).

``threshold`` rows are a baseline, not a rule of the module: one fixed similarity for every
list. The recommendation is the rule with ``min_results`` 3 whose precision lift, averaged
over both bases, is highest. Writes ``bench/results/cutoff.json`` (``cutoff-fused.json``
with ``--fusion``) and prints the tables.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.results import RESULTS_DIR, plain_args, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.search_quality.labels import load_labels  # noqa: E402

DATABASE = "quality_fashion_products_products_0cd27c42_efficientnet"
CSV = BASE_DIR.parent / "shared" / "data" / "fashion-products" / "products.csv"
FIXED = (1, 3, 5, 8, 10, 12, 20, 30, 50)
GRID = {
    "ratio": (0.8, 0.85, 0.88, 0.9, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98),
    "gap": (0.3, 0.5, 0.75, 1.0, 1.5, 2.0),
    "stddev": (0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
    # Not a rule of visualsearch.query.cutoff: one fixed similarity for every list, the
    # baseline the relative rules replace (its scale is the encoder's).
    "threshold": (0.8, 0.82, 0.84, 0.85, 0.86, 0.88, 0.9),
}
MIN_RESULTS = (1, 3, 5)
#: The floor the recommendation keeps: a near-duplicate top hit must not leave a lone result.
RECOMMENDED_MIN_RESULTS = 3
LEVEL = "articleType"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--csv", type=Path, default=CSV, help="labelled catalog CSV")
    parser.add_argument("--database", default=None, help=f"database ({DATABASE})")
    parser.add_argument("--k", type=int, default=50, help="results fetched per query (50)")
    parser.add_argument("--sample", type=int, help="query a seeded sample of N products")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample (0)")
    parser.add_argument(
        "--fusion",
        default="off",
        help="the demo shop's VISUALSEARCH_FUSION: off (default: the image vectors alone, the "
        'encoder\'s cosine similarity) or a JSON recipe such as \'{"image": 0.5, "name": 0.5}\'',
    )
    parser.add_argument("--output", type=Path, help="JSON report (bench/results/cutoff.json)")
    args = parser.parse_args(argv)
    if args.k < 12 or (args.sample is not None and args.sample < 1):
        parser.error("--k must be at least 12 and --sample at least 1")
    return args


def collect(args: argparse.Namespace, labels: dict) -> tuple[list[dict], dict]:
    """One similar-products list per query: ``[{"scores": […], "relevant": […], "others": n}]``."""
    from tqdm import tqdm

    from visualsearch.conf import visualsearch_settings
    from visualsearch.encoders import get_encoder
    from visualsearch.query import similar_products
    from visualsearch.storage.lookup import get_image_model, get_product_model

    field = visualsearch_settings.PRODUCT_FIELD
    ready = set(get_image_model().objects.ready().values_list(field, flat=True))
    products = list(
        get_product_model()
        ._default_manager.filter(pk__in=ready, external_id__in=list(labels))
        .order_by("pk")
    )
    label_of = {p.pk: labels[str(p.external_id)].get(LEVEL) for p in products}
    counts = Counter(label_of.values())
    queries = [p for p in products if label_of[p.pk] is not None]
    if args.sample and args.sample < len(queries):
        queries = sorted(random.Random(args.seed).sample(queries, args.sample), key=lambda p: p.pk)
    light = get_product_model()._default_manager.only("pk")
    lists, latencies = [], []
    for product in tqdm(
        queries, desc="similar_products", unit="query", file=sys.stderr, mininterval=5
    ):
        before = time.perf_counter()
        results = similar_products(product, args.k, queryset=light)
        latencies.append((time.perf_counter() - before) * 1000)
        wanted = label_of[product.pk]
        lists.append(
            {
                "scores": [float(r.similarity) for r in results],
                "relevant": [label_of.get(r.pk) == wanted for r in results],
                "others": counts[wanted] - 1,
            }
        )
    info = {
        "encoder": get_encoder().model_id,
        "ready_products": len(products),
        "queries": len(queries),
        "short_lists": sum(len(item["scores"]) < args.k for item in lists),
        "query_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
    }
    return lists, info


def measure(lists: list[dict], base: int, cut: Callable[[list[float]], int]) -> dict[str, float]:
    """Mean metrics of ``cut(scores) -> kept length`` over the first ``base`` of every list."""
    lengths, precision, recall, list_recall, f1 = [], [], [], [], []
    dropped = dropped_hits = 0
    for item in lists:
        scores, relevant = item["scores"][:base], item["relevant"][:base]
        if not scores:
            continue
        kept = cut(scores)
        hits = sum(relevant[:kept])
        p = hits / kept
        r = hits / min(base, item["others"]) if item["others"] else 0.0
        lengths.append(kept)
        precision.append(p)
        recall.append(r)
        if any(relevant):
            list_recall.append(hits / sum(relevant))
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
        dropped += len(scores) - kept
        dropped_hits += sum(relevant[kept:])
    mean = statistics.fmean
    return {
        "mean_length": round(mean(lengths), 2),
        "median_length": statistics.median(lengths),
        "cut_share": round(sum(n < base for n in lengths) / len(lengths), 3),
        "short_share": round(sum(n <= 2 for n in lengths) / len(lengths), 3),
        "precision": round(mean(precision), 4),
        "recall": round(mean(recall), 4),
        "list_recall": round(mean(list_recall), 4),
        "f1": round(mean(f1), 4),
        "dropped_precision": round(dropped_hits / dropped, 4) if dropped else None,
    }


def interpolate(curve: dict[int, dict], length: float) -> dict[str, float]:
    """Precision, recall and F1 of fixed lengths, linearly interpolated at ``length``."""
    low = max(n for n in curve if n <= max(length, 1))
    high = min((n for n in curve if n >= length), default=low)
    share = 0.0 if high == low else (length - low) / (high - low)
    return {
        key: round(curve[low][key] + share * (curve[high][key] - curve[low][key]), 4)
        for key in ("precision", "recall", "f1")
    }


def cutter(rule: str, value: float, min_results: int) -> Callable[[list[float]], int]:
    """``scores -> kept length`` for a rule of the cut-off module (or the threshold baseline)."""
    from visualsearch.query.cutoff import relevance_cutoff

    if rule == "threshold":

        def cut(scores: list[float]) -> int:
            count = next((i for i, score in enumerate(scores) if score < value), len(scores))
            return max(count, min(min_results, len(scores)))

        return cut
    return lambda scores: len(
        relevance_cutoff(scores, rule, value, min_results=min_results, key=float)
    )


def evaluate(lists: list[dict], base: int) -> dict[str, Any]:
    """Fixed lengths 1..base and every rule of ``GRID`` x ``MIN_RESULTS`` on ``base`` results;
    each rule also on the queries whose label has fewer than ``base`` other products."""
    rare = [item for item in lists if item["others"] < base]
    curve = {n: measure(lists, base, lambda s, n=n: min(n, len(s))) for n in range(1, base + 1)}
    rules = []
    for rule, values in GRID.items():
        for value in values:
            for min_results in MIN_RESULTS:
                cut = cutter(rule, value, min_results)
                row = {"rule": rule, "value": value, "min_results": min_results}
                row.update(measure(lists, base, cut))
                same = interpolate(curve, row["mean_length"])
                row["fixed_at_same_length"] = same
                row["precision_lift"] = round(row["precision"] - same["precision"], 4)
                if rare:
                    row["rare_labels"] = {
                        key: value
                        for key, value in measure(rare, base, cut).items()
                        if key in ("mean_length", "precision", "recall")
                    }
                rules.append(row)
    return {
        "base": base,
        "rare_label_queries": len(rare),
        "fixed": {n: curve[n] for n in FIXED if n <= base},
        "fixed_rare_labels": measure(rare, base, len) if rare else None,
        "rules": rules,
    }


def recommend(sections: dict[str, dict]) -> dict[str, Any]:
    """The rule of :mod:`visualsearch.query.cutoff` with ``RECOMMENDED_MIN_RESULTS`` whose
    precision gain over fixed lengths of the same mean length is highest, averaged over the
    bases (the threshold baseline is not a candidate)."""
    gains: dict[tuple, list[float]] = {}
    for section in sections.values():
        for row in section["rules"]:
            if row["rule"] != "threshold" and row["min_results"] == RECOMMENDED_MIN_RESULTS:
                key = (row["rule"], row["value"], row["min_results"])
                gains.setdefault(key, []).append(row["precision_lift"])
    (rule, value, min_results), lifts = max(
        gains.items(), key=lambda item: statistics.fmean(item[1])
    )
    return {
        "rule": rule,
        "value": value,
        "min_results": min_results,
        "mean_precision_lift": round(statistics.fmean(lifts), 4),
        "setting": {"rule": rule, "value": value, "min_results": min_results},
        "criterion": (
            f"highest precision over fixed lengths of the same mean length, averaged over the "
            f"bases, among the rules with min_results={RECOMMENDED_MIN_RESULTS}"
        ),
    }


def table(section: dict[str, Any]) -> str:
    """The fixed lengths and every rule, as text."""
    head = (
        f"{'list':<24}{'len':>7}{'cut':>6}{'<=2':>6}{'prec':>7}{'lift':>7}{'recall':>7}"
        f"{'l-rec':>7}{'F1':>7}{'dropP':>7}{'rareP':>7}"
    )
    lines = [f"\nfirst {section['base']} results of each list", head]
    rare = section["fixed_rare_labels"]
    for n, row in section["fixed"].items():
        lines.append(
            _row(f"fixed k={n}", row, rare["precision"] if rare and n == section["base"] else None)
        )
    for row in sorted(section["rules"], key=lambda r: (r["rule"], r["min_results"], r["value"])):
        name = f"{row['rule']}:{row['value']:g} min {row['min_results']}"
        lines.append(_row(name, row, row.get("rare_labels", {}).get("precision")))
    return "\n".join(lines)


def _row(name: str, row: dict, rare: float | None) -> str:
    lift = row.get("precision_lift")
    dropped = row["dropped_precision"]
    return (
        f"{name:<24}{row['mean_length']:>7.2f}{row['cut_share']:>6.2f}{row['short_share']:>6.2f}"
        f"{row['precision']:>7.3f}{'' if lift is None else f'{lift:+.3f}':>7}"
        f"{row['recall']:>7.3f}{row['list_recall']:>7.3f}{row['f1']:>7.3f}"
        f"{'' if dropped is None else f'{dropped:.3f}':>7}"
        f"{'' if rare is None else f'{rare:.3f}':>7}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    database = args.database or os.environ.get("VISUALSEARCH_DB_NAME") or DATABASE
    os.environ["VISUALSEARCH_DB_NAME"] = database
    os.environ.setdefault("VISUALSEARCH_ENCODER", "efficientnet")
    os.environ["VISUALSEARCH_FUSION"] = args.fusion  # read by shop/settings.py
    labels = load_labels(args.csv.resolve())
    setup_django()
    started = time.perf_counter()
    lists, info = collect(args, labels)
    query_s = round(time.perf_counter() - started, 1)
    sections = {}
    for base in sorted({12, args.k}):
        sections[str(base)] = evaluate(lists, base)
        print(table(sections[str(base)]))
    recommended = recommend(sections)
    print(f"\nrecommended: {recommended}")
    report = {
        "machine": machine(),
        "load_average": load_average(),
        "args": plain_args(args),
        "database": database,
        "catalog": str(args.csv),
        "relevant": f"same {LEVEL}",
        "k": args.k,
        "fusion": args.fusion,
        "sample": args.sample,
        "seed": args.seed if args.sample else None,
        **info,
        "query_seconds": query_s,
        "notes": {
            "recall": "relevant kept / min(base, other products with the label)",
            "list_recall": "relevant kept / relevant among the base results",
            "f1": "mean over queries of 2PR/(P+R) with the recall above",
            "fixed_at_same_length": "fixed lengths interpolated at the rule's mean length",
            "precision_lift": "precision minus fixed_at_same_length's precision",
            "short_share": "share of the lists cut to 2 results or fewer",
            "dropped_precision": "share of relevant results among those the rule drops",
            "rare_labels": "the queries whose label has fewer than base other products",
            "threshold": "baseline only: one fixed similarity for every list",
        },
        "recommended": recommended,
        "bases": sections,
    }
    name = "cutoff.json" if args.fusion == "off" else "cutoff-fused.json"
    write_json(args.output or RESULTS_DIR / name, report)


if __name__ == "__main__":
    main()
