"""Rounds to target: how fast "Recommended for you" leads a shopper to the product they want.

    .venv/bin/python bench/rounds_to_target.py                  # the demo database
    .venv/bin/python bench/rounds_to_target.py --targets 50 --shares 0.2,0.3 --skip-full

A target product is drawn at random. Each round the shopper is shown k products (k=10), the
recommendations plus exploration picks, through the app's own code
(:func:`visualsearch.query.recommend.recommend_for_session` with an in-memory session, what the
widget and the API call). The simulated shopper clicks the shown product most like the target
by its LABELS from the catalog CSV — same ``articleType`` first, then ``baseColour``, then
``gender``, ties broken at random — never by embeddings; the click is recorded with
:func:`visualsearch.query.recommend.record_view`. The count is the number of rounds until the
target is among the products shown (``--max-rounds`` caps a search; capped ones count as the
cap and are reported).

First on a random ``--subset`` of 459 products (the seed's catalog size; candidates restricted
with a ``pk__in`` product filter), sweeping the exploration share; then on the whole catalog
with the best share. Random browsing (k unseen products at random each round) needs
(ceil(N/k) + 1) / 2 rounds on average, about N/(2k). The database is only read (sessions
stay in memory); products and labels are joined by ``Product.external_id`` = the CSV's ``id``.
Targets are spread over ``--jobs`` processes; every target has its own seeds (Python's and
Postgres' ``random()``), so results do not depend on how they are spread.

With an adapted encoder (``manage.py visualsearch_adapt --split-key external_id``), pass the
same split as ``--held-out 0.2 --holdout-seed 0``: the subset is then drawn from the products
the projection never saw in training (the whole-catalog run still covers every product).

Prints a table and writes ``bench/results/rounds-to-target.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402
from bench.common.machine import load_average, machine, postgres  # noqa: E402
from bench.common.results import RESULTS_DIR, shown, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.common.stats import median, percentile, timed  # noqa: E402

CSV = DATA_DIR / "products.csv"
OUT = RESULTS_DIR / "rounds-to-target.json"
LABELS = ("articleType", "baseColour", "gender")  # the shopper's preference order
SEED_ROUNDS_AT_459 = 13  # the seed's reported mean
_labels: dict = {}  # product pk -> labels, in each worker process


def setup(overrides: dict, labels: dict | None = None) -> None:
    """Django with the ``VISUALSEARCH`` overrides (in the main process and in each worker)."""
    setup_django(visualsearch=overrides)
    if labels is not None:
        _labels.update(labels)


def click(shown: list, target_labels: tuple, rng: random.Random):
    """The shown product most like the target by labels (lexicographic), ties at random."""

    def likeness(product) -> tuple:
        own = _labels.get(product.pk, (None,) * len(LABELS))
        return tuple(a == b for a, b in zip(own, target_labels, strict=True))

    best = max(likeness(product) for product in shown)
    return rng.choice([product for product in shown if likeness(product) == best])


def search(task: tuple) -> tuple[int, list[float]]:
    """Rounds until the target is shown, and the milliseconds each recommendation took."""
    from django.contrib.sessions.backends.base import SessionBase
    from django.db import connection

    from visualsearch.query import similar_products
    from visualsearch.query.recommend import recommend_for_session, record_view, viewed_products

    target, candidates, k, share, strategy, max_rounds, seed, page = task
    rng = random.Random(seed)
    with connection.cursor() as cursor:  # ORDER BY random() draws repeat from run to run
        cursor.execute("SELECT setseed(%s)", [(seed % 2000) / 1000 - 1])
    filters = {"pk__in": candidates} if candidates else {}
    session = SessionBase()  # no session key: a plain in-memory dict, never saved
    timings = []
    for round_number in range(1, max_rounds + 1):
        ms, offered = timed(
            recommend_for_session, session, k, exploration=share, strategy=strategy, **filters
        )
        timings.append(ms)
        viewed = viewed_products(session)
        if page and viewed:  # the product page: its similar-products widget is shown too
            offered = offered + similar_products(viewed[-1], page, **filters)
        if any(product.pk == target for product in offered):
            return round_number, timings
        if offered:
            record_view(session, click(offered, _labels[target], rng))
    return max_rounds, timings


def run(pool, name: str, candidates: list, args, share: float, strategy: str) -> dict:
    """One configuration over ``args.targets`` targets drawn from ``candidates``."""
    from tqdm import tqdm

    key = f"{args.seed}:{name}:{share}:{strategy}"
    targets = random.Random(key).sample(sorted(candidates), min(args.targets, len(candidates)))
    n = len(candidates)
    max_rounds = args.max_rounds or math.ceil(n / args.k)
    restrict = sorted(candidates) if name != "full" else None
    tasks = [
        (
            t,
            restrict,
            args.k,
            share,
            strategy,
            max_rounds,
            zlib.crc32(f"{key}:{t}".encode()),
            args.page,
        )
        for t in targets
    ]
    counts, timings = [], []
    label = f"{name} explore={share} {strategy}"
    for count, spent in tqdm(pool.map(search, tasks), total=len(tasks), desc=label):
        counts.append(count)
        timings.extend(spent)
    return {
        "catalog": name,
        "products": n,
        "exploration": share,
        "strategy": strategy,
        "targets": len(targets),
        "mean": round(statistics.fmean(counts), 2),
        "median": statistics.median(counts),
        "p90": percentile(counts, 0.9),
        "capped": sum(1 for c in counts if c >= max_rounds),
        "max_rounds": max_rounds,
        "random_browsing": round((math.ceil(n / args.k) + 1) / 2, 1),
        "recommend_ms_p50": round(percentile(timings, 0.5), 1),
        "recommend_ms_p95": round(percentile(timings, 0.95), 1),
    }


def filter_cost(subset: list, everything: list, repeats: int = 15) -> dict:
    """Median milliseconds of one recommendation (k=10, five products viewed) by filter."""
    from django.contrib.sessions.backends.base import SessionBase
    from django.db import DatabaseError

    from visualsearch.query.recommend import recommend_for_session, record_view

    results = {}
    cases = {
        "none": {},
        f"pk__in {len(subset)} ids": {"pk__in": subset},
        f"pk__in {len(everything)} ids": {"pk__in": everything},
    }
    for name, filters in cases.items():
        spent = []
        try:
            for _ in range(repeats):
                session = SessionBase()
                for pk in random.Random(1).sample(subset, 5):
                    record_view(session, pk)
                spent.append(timed(recommend_for_session, session, 10, **filters)[0])
        except DatabaseError as exc:  # reported, not hidden: the other rows still count
            results[name] = f"error: {exc}"
            continue
        results[name] = round(median(spent), 1)
    return results


def first_visit_overlap(subset: list, args, sample: int = 200, size: int = 8) -> dict:
    """On a first visit (one product viewed), how many of the ``size`` recommendations the
    ``size`` similar products beside them repeat: mean count, with and without
    ``RECOMMEND_SKIP_SIMILAR``, over a seeded sample of the subset (the subset as filter)."""
    from django.test import override_settings

    from visualsearch.conf import visualsearch_settings
    from visualsearch.query import similar_products
    from visualsearch.query.recommend import recommend

    settings_now = {**visualsearch_settings.user_settings}
    filters = {"pk__in": subset}
    products = random.Random(args.seed).sample(subset, min(sample, len(subset)))
    result = {"sample": len(products), "size": size}
    for name, skip in (("without_skip", 0), ("with_skip", size)):
        overlaps = []
        with override_settings(VISUALSEARCH={**settings_now, "RECOMMEND_SKIP_SIMILAR": skip}):
            for pk in products:
                similar = {p.pk for p in similar_products(pk, size, **filters)}
                picks = {p.pk for p in recommend([pk], size, **filters)}
                overlaps.append(len(similar & picks))
        result[name] = round(statistics.fmean(overlaps), 2)
    print(f"first visit: similar products repeated among {size} recommendations: {result}")
    return result


def _floats(text: str) -> list[float]:
    return [float(item) for item in text.split(",") if item.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", type=Path, default=CSV)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--subset", type=int, default=459)
    parser.add_argument("--shares", default="0,0.1,0.2,0.3,0.4", help="diverse exploration")
    parser.add_argument("--random-shares", default="0.3", help="random exploration, compared")
    parser.add_argument("--history", type=int, default=None, help="RECOMMEND_HISTORY")
    parser.add_argument("--focus", type=float, default=None, help="RECOMMEND_FOCUS")
    parser.add_argument("--memory", type=int, default=None, help="RECOMMEND_SHOWN_MEMORY")
    parser.add_argument("--diversity", type=float, default=None, help="RECOMMEND_DIVERSITY")
    parser.add_argument(
        "--text-weight", type=float, default=None,
        help="RECOMMEND_TEXT_WEIGHT (0: image vectors only; needs TEXT_MODEL)",
    )  # fmt: skip
    parser.add_argument(
        "--held-out", type=float, default=None,
        help="draw the subset from this held-out share (by external id), as visualsearch_adapt",
    )  # fmt: skip
    parser.add_argument("--holdout-seed", type=int, default=0)
    parser.add_argument(
        "--skip-similar", type=int, default=None,
        help="RECOMMEND_SKIP_SIMILAR (0: recommendations may repeat the similar products)",
    )  # fmt: skip
    parser.add_argument(
        "--page", type=int, default=0, metavar="N",
        help="the shopper is on the product page of the last click: its N similar products "
        "are shown beside the recommendations (0: the recommendations alone)",
    )  # fmt: skip
    parser.add_argument(
        "--fusion", default=None,
        help="VISUALSEARCH_FUSION for the shop settings: a JSON recipe or off (default: the "
        "shop's)",
    )  # fmt: skip
    parser.add_argument("--max-rounds", type=int, default=None, help="default: ceil(N/k)")
    parser.add_argument("--skip-full", action="store_true", help="only the subset")
    parser.add_argument("--full-targets", type=int, default=None, help="default: --targets")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    overrides = {
        name: value
        for name, value in {
            "RECOMMEND_HISTORY": args.history,
            "RECOMMEND_FOCUS": args.focus,
            "RECOMMEND_SHOWN_MEMORY": args.memory,
            "RECOMMEND_DIVERSITY": args.diversity,
            "RECOMMEND_TEXT_WEIGHT": args.text_weight,
            "RECOMMEND_SKIP_SIMILAR": args.skip_similar,
        }.items()
        if value is not None
    }
    if args.fusion is not None:  # read by shop/settings.py, in the workers too
        os.environ["VISUALSEARCH_FUSION"] = args.fusion
    setup(overrides)
    from shop.catalog.models import Product
    from visualsearch.conf import visualsearch_settings
    from visualsearch.encoders import get_encoder
    from visualsearch.learning.adapt import is_held_out

    with args.csv.open(newline="") as handle:
        by_id = {row["id"]: tuple(row[c] for c in LABELS) for row in csv.DictReader(handle)}
    ready = Product.objects.filter(
        images__embedding_status="ready", external_id__in=list(by_id)
    ).distinct()
    external = dict(ready.values_list("pk", "external_id"))
    labels = {pk: by_id[ext] for pk, ext in external.items()}
    everything = sorted(labels)
    candidates = everything
    if args.held_out is not None:
        split = (args.held_out, args.holdout_seed)
        candidates = [pk for pk in everything if is_held_out(external[pk], *split)]
    subset = sorted(random.Random(args.seed).sample(candidates, args.subset))
    configs = [(share, "diverse") for share in _floats(args.shares)]
    configs += [(share, "random") for share in _floats(args.random_shares)]

    report = {
        "machine": {**machine(), **postgres(), "load_average_at_start": load_average()},
        "args": {key: str(value) for key, value in vars(args).items()},
        "settings": {
            key: getattr(visualsearch_settings, key)
            for key in (
                "RECOMMEND_HISTORY",
                "RECOMMEND_FOCUS",
                "RECOMMEND_SHOWN_MEMORY",
                "RECOMMEND_DIVERSITY",
                "RECOMMEND_TEXT_WEIGHT",
                "RECOMMEND_SKIP_SIMILAR",
                "TEXT_MODEL",
                "FUSION",
                "FUSED_SURFACES",
            )
        },
        "encoder": visualsearch_settings.ENCODER,
        "encoder_model": get_encoder().model_id,
        "seed_rounds_at_459": SEED_ROUNDS_AT_459,
        "subset_sweep": [],
        "best_on_subset": None,
        "full_catalog": [],
    }
    started = time.perf_counter()
    print(f"{'catalog':<12}{'N':>6}{'explore':>9}{'share':>6}{'mean':>7}{'median':>7}", end="")
    print(f"{'p90':>5}{'capped':>7}{'random':>8}{'ms p50':>8}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, context, setup, (overrides, labels)) as pool:
        for config in configs:
            row = run(pool, f"subset-{len(subset)}", subset, args, *config)
            report["subset_sweep"].append(_show(row))
            _save(report, args.out, started)
        best = min(report["subset_sweep"], key=lambda r: (r["mean"], r["median"]))
        report["best_on_subset"] = {
            "exploration": best["exploration"],
            "strategy": best["strategy"],
        }
        report["mean"] = best["mean"]  # mean rounds of the best subset row
        if not args.skip_full:
            args.targets = args.full_targets or args.targets
            row = run(pool, "full", everything, args, best["exploration"], best["strategy"])
            report["full_catalog"].append(_show(row))
            _save(report, args.out, started)
    report["first_visit_overlap"] = first_visit_overlap(subset, args)
    _save(report, args.out, started)
    report["recommend_ms_by_filter"] = filter_cost(subset, everything)
    _save(report, args.out, started)
    print(f"seed: {SEED_ROUNDS_AT_459} rounds at N=459; target: mean <= 6")
    print(f"one recommendation, ms (median, by filter): {report['recommend_ms_by_filter']}")
    print(f"wrote {shown(args.out)} after {report['seconds']} s")


def _show(row: dict) -> dict:
    print(
        f"{row['catalog']:<12}{row['products']:>6}{row['strategy']:>9}{row['exploration']:>6}"
        f"{row['mean']:>7}{row['median']:>7}{row['p90']:>5}{row['capped']:>7}"
        f"{row['random_browsing']:>8}{row['recommend_ms_p50']:>8}",
        flush=True,
    )
    return row


def _save(report: dict, path: Path, started: float) -> None:
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_json(path, report, announce=False)


if __name__ == "__main__":
    main()
