"""The query load of ``bench/lifecycle.py``: a process of its own (no GIL shared with the
switch) asking ``visualsearch.similar_products`` and ``visualsearch.search_by_image`` at a
steady rate, alternately, over random products and dev photos.

    cd PROJECT && python /work/main/bench/lifecycle_load.py --out load.json --rows 6573

Imports the project in the current folder (it goes first on ``sys.path``, ahead of the
editable install), so the checkout before issue 18 is loaded the same way, and runs Django
with the settings of the environment (``DJANGO_SETTINGS_MODULE`` and the shop's variables).
Prints ``ready`` once both kinds of query have been answered once (those two are not
counted), then queries until SIGTERM and writes every query to ``--out``: ``[wall time,
kind, argument, results, ms, error]``.

``lifecycle.py`` imports the rest: :func:`watch` (database samples while a command runs),
:func:`milestones` of those samples, :func:`tally` and :func:`counts` of the queries.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-products"
PHOTOS = 200  # dev photos kept in memory for search_by_image
#: What :func:`watch` samples: image rows by state (both codes) and, on the new code, the
#: vectors kept per model (base features and the building generation's).
STATES = "SELECT embedding_status, count(*) FROM catalog_productimage GROUP BY 1"
KEPT = "SELECT model_id, count(*) FROM visualsearch_encodedvector GROUP BY 1"
ACTIVE = (  # statements other than plain SELECTs (the load's), and whatever waits for a lock
    "SELECT left(query, 60) || coalesce(' [' || wait_event_type || ']', '') "
    "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
    "AND pid <> pg_backend_pid() AND (query NOT ILIKE 'select%' OR query ILIKE '%for update%' "
    "OR wait_event_type = 'Lock')"
)
stopping = False


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the queries")
    parser.add_argument("--rate", type=float, default=20.0, help="queries per second (20)")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="products.csv + images/")
    parser.add_argument("--rows", type=int, help="photos drawn from the first N catalog rows")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def setup_django() -> str:
    """``django.setup()`` for the project in the current folder; its visualsearch's path."""
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    import django

    django.setup()
    import visualsearch

    return visualsearch.__file__


def targets(data: Path, rows: int | None, rng: random.Random) -> tuple[list, list]:
    """Product pks with a ready image (an unembedded product is empty for another reason),
    and ``(name, bytes)`` of dev photos of the imported rows."""
    from shop.catalog.models import ProductImage

    ready = ProductImage.objects.filter(embedding_status="ready")
    products = sorted(set(ready.values_list("product_id", flat=True)))
    with open(data / "products.csv", newline="") as handle:
        files = [row["file"] for row in csv.DictReader(handle)][:rows]
    names = rng.sample(files, min(PHOTOS, len(files)))
    return products, [(name, (data / name).read_bytes()) for name in names]


def ask(kind: str, argument: Any, k: int) -> list:
    """One query: ``[wall time, kind, argument, results, ms, error]``."""
    from django.db import close_old_connections

    import visualsearch

    started, clock = time.time(), time.perf_counter()
    found, error = -1, None
    try:
        if kind == "similar":
            found = len(visualsearch.similar_products(argument, k=k))
        else:
            found = len(visualsearch.search_by_image(argument[1], k=k))
    except Exception as exc:  # counted and shown, never stops the load
        error = f"{type(exc).__name__}: {exc}"[:300]
        close_old_connections()
    ms = round((time.perf_counter() - clock) * 1000, 1)
    name = argument if kind == "similar" else argument[0]
    return [round(started, 3), kind, name, found, ms, error]


def run(args: argparse.Namespace, products: list, photos: list, rng: random.Random) -> list:
    """Query at ``args.rate`` until SIGTERM; a late query moves the schedule, never bursts."""
    records, due, turn = [], time.monotonic(), 0
    while not stopping:
        kind = "similar" if turn % 2 == 0 else "image"
        argument = rng.choice(products) if kind == "similar" else rng.choice(photos)
        records.append(ask(kind, argument, args.k))
        turn += 1
        due += 1 / args.rate
        now = time.monotonic()
        if now > due + 1:
            due = now
        while not stopping and time.monotonic() < due:
            time.sleep(min(0.01, max(0.0, due - time.monotonic())))
    return records


def main() -> None:
    args = parse_args()
    path = setup_django()
    rng = random.Random(args.seed)
    products, photos = targets(args.data, args.rows, rng)
    if not products or not photos:
        sys.exit("no embedded product or no photo to query with")
    warm = [ask("similar", products[0], args.k), ask("image", photos[0], args.k)]

    def stop(signum: int, frame: Any) -> None:
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    records = run(args, products, photos, rng)
    report = {"visualsearch": path, "rate": args.rate, "products": len(products)}
    report |= {"photos": len(photos), "warm_up": warm, "records": records}
    args.out.write_text(json.dumps(report))


@contextlib.contextmanager
def watch(url: str, kept: bool, every: float = 0.5) -> Iterator[list]:
    """While the block runs, a thread samples the database at ``url`` every ``every`` s:
    ``[first seen, last seen, rows by state, kept vectors by model, statements running]``
    (other than SELECTs); a sample equal to the one before only moves its last-seen time."""
    import psycopg

    samples: list = []
    done = threading.Event()

    def poll() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while not done.is_set():
                sample = [dict(conn.execute(STATES).fetchall())]
                sample.append(dict(conn.execute(KEPT).fetchall()) if kept else {})
                sample.append(sorted(row[0] for row in conn.execute(ACTIVE).fetchall()))
                now = round(time.time(), 2)
                if samples and samples[-1][2:] == sample:
                    samples[-1][1] = now
                else:
                    samples.append([now, now, *sample])
                done.wait(every)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(10)


def milestones(samples: list, started: float, model_id: str | None) -> dict[str, Any]:
    """Seconds from ``started`` until: ``model_id``'s vectors were all built, the cut-over's
    copy was first and last seen running, rows first went stale, none was stale again."""

    def first(rows: list, seen: int = 0) -> float | None:
        return round(rows[0][seen] - started, 1) if rows else None

    built = max((row[3].get(model_id, 0) for row in samples), default=0)
    copy = [row for row in samples if any("AS t SET embedding" in q for q in row[4])]
    stale = [row for row in samples if row[2].get("stale")]
    after = [row for row in samples if stale and row[0] > stale[0][0] and not row[2].get("stale")]
    return {
        "built_s": first([row for row in samples if built and row[3].get(model_id) == built]),
        "copy_seen_s": first(copy),
        "copy_last_seen_s": first(copy[-1:], seen=1),
        "stale_s": first(stale),
        "none_stale_s": first(after),
    }


def tally(load: dict, phases: list) -> None:
    """Count the load's queries into the phase whose window they started in."""
    ends = [phase["start"] for phase in phases[1:]] + [load["stopped"]]
    for phase, end in zip(phases, ends, strict=True):
        records = [r for r in load["records"] if phase["start"] <= r[0] < end]
        phase["end"] = end
        phase |= counts(records)


def counts(records: list, load: dict | None = None) -> dict[str, Any]:
    """Queries, empty lists, errors and latency of ``records``; with ``load``, its report's
    facts besides (what it imported, rate, how long it ran), its records left out."""
    from bench.common.stats import percentile, rounded  # the bench's, run from lifecycle.py

    empty = [r for r in records if r[3] == 0]
    errors = [r for r in records if r[5] is not None]
    report: dict[str, Any] = {"queries": len(records), "empty": len(empty), "errors": len(errors)}
    for kind in ("similar", "image"):
        ms = [r[4] for r in records if r[1] == kind and r[5] is None]
        report[f"{kind}_p50_ms"] = rounded(percentile(ms, 0.5))
        report[f"{kind}_p95_ms"] = rounded(percentile(ms, 0.95))
    report["empty_examples"], report["error_examples"] = empty[:5], errors[:5]
    if load is not None:
        report |= {key: value for key, value in load.items() if key != "records"}
        report["seconds"] = round(load["stopped"] - records[0][0], 1) if records else 0.0
    return report


if __name__ == "__main__":
    main()
