"""Search quality on a labelled product catalog, through the app's own tables and queries.

    .venv/bin/python bench/quality.py ../shared/data/fashion-products/products.csv
    .venv/bin/python bench/quality.py CSV --encoder clip --k 10
    .venv/bin/python bench/quality.py CSV --holdout-only 0.2 --seed 0
    .venv/bin/python bench/quality.py CSV --limit 500 --database quality_smoke

The CSV has the columns of ``../shared/data/fashion-products/products.csv`` (``id``, ``file``,
``productDisplayName``, ``articleType``, ``subCategory``, optionally ``masterCategory``…); any
folder with those columns works. The harness:

1. imports the catalog into the app's real tables with ``manage.py import_catalog
   --defer-embedding`` (idempotent: a re-run reuses the rows) and embeds what is missing or
   stale with ``manage.py visualsearch_reindex``, in a database of its own on the embedded
   Postgres server (``--database``, default ``quality_<csv slug>_<hash>_<encoder>``), with
   its media under ``media/quality/<database>`` (unless ``MEDIA_ROOT`` is set), so the demo
   database is untouched. When ``DATABASE_URL`` is set the settings use it instead, and the
   harness imports into THAT database;
2. takes the ground truth from the CSV (``articleType``, ``subCategory``, ``masterCategory``),
   joined to products by ``Product.external_id``;
3. queries with every product that has a ready embedding of the active encoder, through
   ``visualsearch.query.similar_products`` (the HNSW query of the product page, the product
   itself excluded) and reports precision@k by label, mAP@k by articleType, chance level,
   recall@k of HNSW against an exact scan (``nearest_products(..., exact=True)``), a sanity
   check (a product's own image vector finds that product first) and p50/p95 latency.

``--holdout-only FRACTION --seed S`` evaluates only the queries of a deterministic held-out
subset (:func:`is_held_out`), against the full catalog and against the held-out products only.
Prints a table and writes ``bench/results/quality-<encoder>[-holdout…][-n<limit>].json``.
:func:`evaluate` is reusable from other code (under ``override_settings(VISUALSEARCH=...)``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visualsearch.adapt import is_held_out  # the split visualsearch_adapt trains with

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

ENCODERS = ("efficientnet", "clip")
ID_COLUMNS = ("id", "external_id")  # as import_catalog reads them
LEVELS = ("articleType", "subCategory", "masterCategory")  # label columns, finest first
REQUIRED_LEVELS = ("articleType", "subCategory")
SELF_DISTANCE = 1e-4  # a vector's distance to itself, give or take float32 rounding
MAP_NOTE = (
    "mAP@k: mean over queries of the average precision of the top-k list, normalised by "
    "min(k, number of other products with the query's label); queries whose label no other "
    "product has are left out"
)


def load_labels(csv_path: Path, limit: int | None = None) -> dict[str, dict[str, str | None]]:
    """``{external id: {"articleType": …, "subCategory": …, "masterCategory": …}}`` from the CSV.

    ``limit`` keeps the first ``limit`` distinct ids, like ``import_catalog --limit``. Empty
    values become ``None`` (never a match). Raises ``ValueError`` when columns are missing.
    """
    labels: dict[str, dict[str, str | None]] = {}
    with csv_path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        id_column = next((column for column in ID_COLUMNS if column in header), None)
        missing = [column for column in REQUIRED_LEVELS if column not in header]
        if id_column is None or missing:
            wanted = ([] if id_column else [" or ".join(ID_COLUMNS)]) + missing
            raise ValueError(f"{csv_path} lacks the label column(s) {', '.join(wanted)}.")
        levels = [level for level in LEVELS if level in header]
        for row in reader:
            external_id = (row.get(id_column) or "").strip()
            if not external_id or external_id in labels:
                continue
            if limit is not None and len(labels) >= limit:
                break
            labels[external_id] = {
                level: (row.get(level) or "").strip() or None for level in levels
            }
    return labels


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
    from visualsearch.conf import get_image_model, visualsearch_settings

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
    from visualsearch.conf import get_product_model

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
    from visualsearch.query import nearest_products, similar_products

    filters = dict(filters or {})

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
            "p50": round(float(np.percentile(latencies, 50)), 2) if n else None,
            "p95": round(float(np.percentile(latencies, 95)), 2) if n else None,
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


# --- command line ----------------------------------------------------------------------------


def default_database(csv_path: Path, encoder: str, limit: int | None = None) -> str:
    """``quality_<folder_file slug>_<hash of the absolute path>_<encoder>[_n<limit>]``."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{csv_path.parent.name}_{csv_path.stem}".lower())
    digest = hashlib.sha256(str(csv_path.resolve()).encode()).hexdigest()[:8]
    suffix = f"_{digest}_{encoder}" + (f"_n{limit}" if limit else "")
    return f"quality_{slug.strip('_')[: 63 - len('quality_') - len(suffix)]}{suffix}"


def default_output(encoder: str, args: argparse.Namespace) -> Path:
    name = f"quality-{encoder}"
    if args.holdout_only is not None:
        name += f"-holdout{args.holdout_only:g}-seed{args.seed}"
    if args.limit:
        name += f"-n{args.limit}"
    if args.adapt:
        name += "-adapted"
    return BASE_DIR / "bench" / "results" / f"{name}.json"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("csv_path", type=Path, help="labelled catalog (products.csv columns)")
    parser.add_argument("--encoder", choices=ENCODERS, default="efficientnet")
    parser.add_argument("--k", type=int, default=10, help="results per query (10)")
    parser.add_argument("--database", help="database on the embedded server (default: per CSV)")
    parser.add_argument("--limit", type=int, help="import and evaluate the first N products")
    parser.add_argument(
        "--holdout-only", type=float, metavar="FRACTION", help="evaluate held-out queries only"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split (0)")
    parser.add_argument("--output", type=Path, help="JSON report (default: bench/results/…)")
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="then train the catalog projection on the non-held-out products (articleType), "
        "switch to it and evaluate again (needs --holdout-only)",
    )
    args = parser.parse_args(argv)
    if args.k < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--k and --limit must be at least 1")
    if args.holdout_only is not None and not 0 < args.holdout_only <= 1:
        parser.error("--holdout-only must be in (0, 1]")
    if args.adapt and args.holdout_only is None:
        parser.error("--adapt needs --holdout-only FRACTION (the products kept out of training)")
    if args.database and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", args.database):
        parser.error("--database: letters, digits and _ only, at most 63 characters")
    if not args.csv_path.is_file():
        parser.error(f"{args.csv_path} is not a file")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    csv_path = args.csv_path.resolve()
    try:
        labels = load_labels(csv_path, args.limit)
    except (OSError, ValueError, csv.Error) as exc:
        sys.exit(f"error: {exc}")
    database = args.database or default_database(csv_path, args.encoder, args.limit)
    # Read by shop/settings.py when django.setup() imports it.
    os.environ["VISUALSEARCH_DB_NAME"] = database
    os.environ["VISUALSEARCH_ENCODER"] = args.encoder
    os.environ.setdefault("MEDIA_ROOT", str(BASE_DIR / "media" / "quality" / database))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from visualsearch.checks import check_dimensions
    from visualsearch.conf import get_product_model

    if os.environ.get("DATABASE_URL"):
        database = settings.DATABASES["default"]["NAME"]
        print(f"DATABASE_URL is set: the catalog is imported into that database ({database}).")
    print(
        f"Database {database}, media in {settings.MEDIA_ROOT}, {len(labels):,} labelled products."
    )
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    call_command("migrate", verbosity=0)
    reindex = ["--resize"] if check_dimensions(connection) else []
    if reindex:
        print("The vector column has another size than the encoder's: resizing, re-embedding.")
    timings["migrate_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    import_args = ["--limit", str(args.limit)] if args.limit else []
    call_command(
        "import_catalog", str(csv_path), "--defer-embedding", "--no-progress", *import_args
    )
    timings["import_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    call_command("visualsearch_reindex", *reindex)
    timings["reindex_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    products = get_product_model()._default_manager.filter(external_id__in=list(labels))
    holdout = None
    if args.holdout_only is not None:
        holdout = {eid for eid in labels if is_held_out(eid, args.holdout_only, args.seed)}
    report = evaluate(products.order_by("pk"), labels, args.k, holdout=holdout)
    timings["evaluate_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    if args.adapt:
        print(format_table(report))
        report = adapt_and_evaluate(products, labels, args, database, report, timings)
    report = {
        "catalog": str(csv_path),
        "database": database,
        "encoder_option": args.encoder,
        **report,
        "holdout": (
            {"fraction": args.holdout_only, "seed": args.seed, "rule": "is_held_out"}
            if holdout is not None
            else None
        ),
        "timings": timings,
    }
    print(format_table(report))
    output = args.output or default_output(args.encoder, args)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    shown = output.relative_to(BASE_DIR) if output.is_relative_to(BASE_DIR) else output
    print(f"wrote {shown}")


def adapt_and_evaluate(
    products: Any,
    labels: Mapping[str, Any],
    args: argparse.Namespace,
    database: str,
    before: dict,
    timings: dict[str, float],
) -> dict:
    """Train the projection on the non-held-out products, switch to it, evaluate again.

    The switch derives adapted vectors from the stored base vectors (no image is re-encoded);
    the database is left with adapted vectors, so a later plain run re-embeds with the base.
    """
    from django.conf import settings
    from django.core.management import call_command
    from django.test import override_settings

    from visualsearch.adapt import Projection

    clock = time.perf_counter()
    projection = (
        BASE_DIR / ".cache" / "quality" / f"{database}-h{args.holdout_only:g}-s{args.seed}.npz"
    )
    call_command(
        "visualsearch_adapt", "--label", "category", "--split-key", "external_id",
        "--holdout", str(args.holdout_only), "--seed", str(args.seed),
        "--out", str(projection), "--reindex", "none", "--no-progress",
    )  # fmt: skip
    timings["adapt_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
    adapted = {
        **settings.VISUALSEARCH,
        "ENCODER": "visualsearch.encoders.adapted.AdaptedEncoder",
        "ENCODER_OPTIONS": {
            "base": settings.VISUALSEARCH["ENCODER"],
            "base_options": settings.VISUALSEARCH["ENCODER_OPTIONS"],
            "projection": str(projection),
        },
    }
    holdout = {eid for eid in labels if is_held_out(eid, args.holdout_only, args.seed)}
    with override_settings(VISUALSEARCH=adapted):
        call_command("visualsearch_reindex", "--stale", "--no-progress")
        timings["switch_s"], clock = round(time.perf_counter() - clock, 1), time.perf_counter()
        after = evaluate(products.order_by("pk"), labels, args.k, holdout=holdout)
    timings["evaluate_adapted_s"] = round(time.perf_counter() - clock, 1)
    meta = Projection.load(projection).meta
    return {
        **after,
        "before_adaptation": before,
        "adaptation": {"projection": str(projection), "trained_on": "articleType", **meta},
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The metrics as a plain-text table, one column per scope."""
    k, scopes = report["k"], list(report["scopes"].values())
    first = scopes[0] if scopes else {}
    rows: list[tuple[str, str, list[Any]]] = [  # (name, format, one value per scope)
        ("queries", ",", [s["queries"] for s in scopes]),
        ("searchable products", ",", [s["searchable_products"] for s in scopes]),
    ]
    for key, title in (
        ("precision_at_k", "precision@{k} {level}"),
        ("map_at_k", "mAP@{k} {level}"),
        ("chance_precision_at_k", "chance precision@{k} {level}"),
    ):
        for level in first.get(key, {}):
            rows.append((title.format(k=k, level=level), ".3f", [s[key][level] for s in scopes]))
    rows += [
        (f"recall@{k} HNSW vs exact", ".3f", [s["recall_at_k_hnsw_vs_exact"] for s in scopes]),
        ("self-match (own vector, d<1e-4)", ".3f", [s["self_match"] for s in scopes]),
        ("  of which strictly first", ".3f", [s["self_match_strictly_first"] for s in scopes]),
        (f"short result lists (<{k})", ",", [s["short_result_lists"] for s in scopes]),
        ("similar_products p50 ms", ".1f", [s["latency_ms"]["p50"] for s in scopes]),
        ("similar_products p95 ms", ".1f", [s["latency_ms"]["p95"] for s in scopes]),
        ("evaluation seconds", ".0f", [s["seconds"] for s in scopes]),
    ]
    names = list(report["scopes"])
    width = max(len(name) for name, _, _ in rows) + 2
    columns = [max(len(name), 8) + 2 for name in names]
    lines = [
        f"{report['encoder']} ({report['dimensions']}-d), k={k}, "
        f"{report['ready_products']:,} of {report['products']:,} products embedded",
        " " * width + "".join(name.rjust(c) for name, c in zip(names, columns, strict=True)),
    ]
    for name, spec, values in rows:
        cells = ["-" if v is None else format(v, spec) for v in values]
        row = "".join(cell.rjust(c) for cell, c in zip(cells, columns, strict=True))
        lines.append(name.ljust(width) + row)
    lines.append(MAP_NOTE + ".")
    if timings := report.get("timings"):
        lines.append(
            "timings (s): " + ", ".join(f"{key} {value}" for key, value in timings.items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
