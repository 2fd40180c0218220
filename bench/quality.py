"""Search quality on a labelled product catalog, through the app's own tables and queries.

    .venv/bin/python bench/quality.py ../shared/data/fashion-products/products.csv
    .venv/bin/python bench/quality.py CSV --encoder clip --k 10
    .venv/bin/python bench/quality.py CSV --holdout-only 0.2 --seed 0
    .venv/bin/python bench/quality.py CSV --limit 500 --database quality_smoke
    .venv/bin/python bench/quality.py CSV --fusion off          # image vectors alone

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

The metrics are in :mod:`bench.search_quality.metrics`, the labels in
:mod:`bench.search_quality.labels`.

``--fusion`` (default: the demo shop's recipe, ``{"image": 0.5, "name": 0.5}``) evaluates the
fused product vectors side by side with the image vectors alone (scopes ``image_only`` and
``fused``), adds a sweep of the image weight over the stored parts (exact scans in numpy) and
photo searches against the fused catalog (:mod:`bench.search_quality.fusion`), and writes
``bench/results/quality-fused.json``; ``--fusion off`` measures the image vectors alone.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visualsearch.learning.adapt import is_held_out  # the split visualsearch_adapt trains with

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.search_quality.fusion import DEFAULT_FUSION, evaluate_fusion  # noqa: E402
from bench.search_quality.labels import load_labels  # noqa: E402
from bench.search_quality.metrics import average_precision, evaluate  # noqa: E402
from bench.search_quality.report import format_table  # noqa: E402

#: What other code (tests/test_quality_harness.py) uses of this script.
__all__ = [
    "average_precision",
    "default_database",
    "evaluate",
    "format_table",
    "is_held_out",
    "load_labels",
    "main",
]
ENCODERS = ("efficientnet", "clip")


def default_database(csv_path: Path, encoder: str, limit: int | None = None) -> str:
    """``quality_<folder_file slug>_<hash of the absolute path>_<encoder>[_n<limit>]``."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"{csv_path.parent.name}_{csv_path.stem}".lower())
    digest = hashlib.sha256(str(csv_path.resolve()).encode()).hexdigest()[:8]
    suffix = f"_{digest}_{encoder}" + (f"_n{limit}" if limit else "")
    return f"quality_{slug.strip('_')[: 63 - len('quality_') - len(suffix)]}{suffix}"


def default_output(encoder: str, args: argparse.Namespace) -> Path:
    name = f"quality-{encoder}"
    if args.fusion != "off":
        name = "quality-fused" if encoder == "efficientnet" else f"quality-{encoder}-fused"
    if args.holdout_only is not None:
        name += f"-holdout{args.holdout_only:g}-seed{args.seed}"
    if args.limit:
        name += f"-n{args.limit}"
    if args.adapt:
        name += "-adapted"
    return RESULTS_DIR / f"{name}.json"


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
        "--fusion",
        help="fused product vectors: a JSON recipe of weights, or off (default: the demo "
        f"shop's, {DEFAULT_FUSION}, off with --holdout-only); evaluated side by side with the "
        "image vectors alone",
    )
    parser.add_argument(
        "--photo-queries", type=int, default=1000, help="photo searches evaluated (1000)"
    )
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
    if args.fusion is None:
        args.fusion = "off" if args.holdout_only is not None else DEFAULT_FUSION
    if args.fusion != "off":
        try:
            json.loads(args.fusion)
        except ValueError as exc:
            parser.error(f"--fusion: not JSON ({exc})")
        if args.adapt or args.holdout_only is not None:
            parser.error("--fusion is evaluated on the whole catalog: add --fusion off")
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
    os.environ["VISUALSEARCH_FUSION"] = args.fusion
    os.environ.setdefault("MEDIA_ROOT", str(BASE_DIR / "media" / "quality" / database))
    setup_django()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from visualsearch.checks import check_dimensions
    from visualsearch.storage.lookup import get_product_model

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
    if args.fusion != "off":
        report = evaluate_fusion(products.order_by("pk"), labels, args, timings)
    else:
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
    write_json(args.output or default_output(args.encoder, args), report)


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

    from visualsearch.encoders.projection import Projection

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


if __name__ == "__main__":
    main()
