"""The measurements: unfiltered top-10 over every path (latency, recall, QPS with 2 client
processes) and the category-filtered strategies."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np

from bench.common.stats import median, percentile, timed
from bench.query.indexes import category_index
from bench.query.paths import Raw, app_nearest, app_settings, app_similar
from bench.query.synthetic import exact_top


def recall(found: list[int], truth) -> float:
    wanted = {int(i) + 1 for i in truth}  # row index -> product id
    return len(wanted & set(found)) / len(wanted)


def summarise(latencies: list[float], recalls: list[float], counts: list[int]) -> dict:
    return {
        "p50_ms": round(median(latencies), 3),
        "p95_ms": round(percentile(latencies, 0.95), 3),
        "recall": round(float(np.mean(recalls)), 4),
        "rows": round(float(np.mean(counts)), 2),
    }


def _qps_worker(path, kind, d, ef, ids, vectors, seconds, start_at, halfvec, queue):
    from django.db import connections

    connections.close_all()
    count = 0
    with app_settings(HNSW_EF_SEARCH=ef, HNSW_HALFVEC=halfvec):
        raw = Raw(kind, d) if path.startswith("raw") else None
        if raw:
            raw.configure(ef)
        while time.time() < start_at:
            time.sleep(0.001)
        stop = start_at + seconds
        while time.time() < stop:
            i = count % len(ids)
            if path == "raw":
                raw.query(vectors[i], int(ids[i]))
            elif path == "raw_similar":
                raw.similar(int(ids[i]), ef)
            elif path == "raw_nearest":
                raw.nearest(vectors[i], int(ids[i]), ef)
            elif path == "nearest":
                app_nearest(vectors[i], int(ids[i]))
            else:
                app_similar(int(ids[i]))
            count += 1
    queue.put(count)


def qps(path, kind, d, ef, ids, vectors, seconds, clients=2) -> float:
    from django.db import connections

    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 1.0
    procs = [
        ctx.Process(
            target=_qps_worker,
            args=(path, kind, d, ef, ids, vectors, seconds, start_at, kind == "halfvec", queue),
        )
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return round(total / seconds, 1)


def unfiltered(kind, n, d, vectors, categories, args) -> list[dict]:
    rng = np.random.default_rng(args.seed + 2)
    idx = rng.choice(n, args.queries, replace=False)
    truth = exact_top(vectors, vectors[idx], 10, exclude=idx)
    ids = idx + 1
    rows = []
    raw = Raw(kind, d)
    for ef in args.ef_search:
        raw.configure(ef)
        lat = {"raw": [], "raw_nearest": [], "nearest": [], "raw_similar": [], "similar": []}
        rec = {key: [] for key in lat}
        cnt = {key: [] for key in lat}
        with app_settings(HNSW_EF_SEARCH=ef, HNSW_HALFVEC=kind == "halfvec"):
            for i in range(min(20, len(idx))):  # warm-up
                raw.query(vectors[idx[i]], int(ids[i]))
                app_similar(int(ids[i]))
            order = list(lat)
            for i, row in enumerate(idx):

                def run(path, i=i, row=row, ef=ef):
                    if path == "raw":
                        return timed(raw.query, vectors[row], int(ids[i]))
                    if path == "raw_similar":
                        return timed(raw.similar, int(ids[i]), ef)
                    if path == "raw_nearest":
                        return timed(raw.nearest, vectors[row], int(ids[i]), ef)
                    if path == "nearest":
                        return timed(app_nearest, vectors[row], int(ids[i]))
                    return timed(app_similar, int(ids[i]))

                # Whichever path runs first on a query reads its part of the graph into
                # memory for the others (a fixed order favoured the later paths, a shuffled
                # one whichever came second): one untimed round first, then every path
                # timed on warm pages, in a shuffled order.
                for path in order:
                    run(path)
                rng.shuffle(order)
                for path in order:
                    ms, found = run(path)
                    lat[path].append(ms)
                    rec[path].append(recall(found, truth[i]))
                    cnt[path].append(len(found))
        stats = {path: summarise(lat[path], rec[path], cnt[path]) for path in lat}
        for path in lat:
            if args.qps_seconds > 0:
                stats[path]["qps_2clients"] = qps(
                    path, kind, d, ef, ids[:50], vectors[idx[:50]], args.qps_seconds
                )
            # Per-query ratios, then the median: the paths ran back to back, query by query.
            # The app's paths against raw SQL doing the same work (raw_similar, raw_nearest),
            # those against the bare raw statement.
            base = lat[{"similar": "raw_similar", "nearest": "raw_nearest"}.get(path, "raw")]
            stats[path]["ratio_to_raw"] = round(
                median(a / b for a, b in zip(lat[path], base, strict=True)), 2
            )
            rows.append(
                {"n": n, "d": d, "index": kind, "ef_search": ef, "path": path, **stats[path]}
            )
        print_rows(rows[-len(lat) :])
    return rows


def filtered(
    kind, n, d, vectors, categories, args, clustered=False, partial=False, covering=False
) -> list[dict]:
    """Category filter (1 of ``--categories``): the raw strategies and the app's choice.

    The app answers the filter from the image row's copy of the category (the demo's
    ``IMAGE_FILTER_FIELDS``) or, with that setting emptied, through the product (a join).
    ``clustered``: after ``CLUSTER`` by the copy's index, only the cases that read it;
    ``covering``: with the copy's covering index (``filter_scan_index``), likewise.

    Every case runs its queries twice: the first pass reads what is not yet in memory (its
    p50 is ``cold_p50_ms``), the second is the one reported.
    """
    from visualsearch.conf import visualsearch_settings

    clustered = clustered or category_index()[1]  # a table clustered by an earlier run
    # hnsw.ef_search the app sets: for a partial index its own setting, else HNSW_EF_SEARCH
    setting = "FILTER_INDEX_EF_SEARCH" if partial else "HNSW_EF_SEARCH"
    app_ef = int(getattr(visualsearch_settings, setting))
    rng = np.random.default_rng(args.seed + 3)
    idx = rng.choice(n, args.filtered_queries, replace=False)
    cats = rng.integers(1, args.categories + 1, len(idx))
    members = [np.flatnonzero(categories == c) for c in cats]
    truth = exact_top(vectors, vectors[idx], 10, exclude=idx, rows=members)
    raw = Raw(kind, d)
    ids = idx + 1
    join = {"IMAGE_FILTER_FIELDS": {}}
    cases = {
        "raw exact, copy (B-tree on the image table)": ("raw", dict(exact=True, copy=True)),
        "app similar_products (auto), copy": ("app", {}),
    }
    if partial:
        cases = {
            f"raw partial HNSW index (ef {app_ef})": (
                "raw",
                dict(ef=app_ef, copy=True, sort=False),
            ),
            "app similar_products (auto), partial index": ("app", {}),
            "raw exact, copy (B-tree on the image table)": ("raw", dict(exact=True, copy=True)),
        }
    elif not (clustered and args.cluster) and not covering:
        cases = {
            "raw post-filter (ef 40)": ("raw", dict(ef=40, iterative="off")),
            "raw iterative relaxed (ef 100)": ("raw", dict(ef=100, iterative="relaxed_order")),
            "raw exact, join (B-tree on the product table)": ("raw", dict(exact=True)),
            **cases,
            "app similar_products (auto), join": ("app", join),
            "app similar_products (iterative), copy": ("app", dict(EXACT_SEARCH_MAX_ROWS=0)),
        }
    from visualsearch.query.knn import estimated_rows
    from visualsearch.storage.lookup import get_image_model

    images = get_image_model().objects.ready().filter(category_id=int(cats[0]))
    estimate = estimated_rows(images)
    rows = []
    for name, (path, opts) in cases.items():
        lat, rec, cnt = [], [], []
        halfvec = kind == "halfvec"
        if path == "raw":
            raw.configure(opts.get("ef", 40), opts.get("iterative", "off"), opts.get("sort", True))
            exact, copy = opts.get("exact", False), opts.get("copy", False)

            def run(i, exact=exact, copy=copy):
                return raw.query(
                    vectors[idx[i]], int(ids[i]), category=int(cats[i]), exact=exact, copy=copy
                )

            ctx = app_settings(HNSW_HALFVEC=halfvec)
        else:

            def run(i):
                return app_similar(int(ids[i]), category_id=int(cats[i]))

            ctx = app_settings(HNSW_HALFVEC=halfvec, **opts)
        with ctx:
            cold = [timed(run, i)[0] for i in range(len(idx))]
            for i in range(len(idx)):
                ms, found = timed(run, i)
                lat.append(ms)
                rec.append(recall(found, truth[i]))
                cnt.append(len(found))
        rows.append(
            {
                "n": n,
                "d": d,
                "index": kind,
                "filter": "category (1 of 200)",
                "case": name
                + (", clustered" if clustered else "")
                + (", covering index" if covering else ""),
                "ef_search": opts.get("ef") if path == "raw" else app_ef,
                "estimated_rows": estimate,
                **summarise(lat, rec, cnt),
                "cold_p50_ms": round(median(cold), 3),
            }
        )
        print_rows(rows[-1:])
    return rows


def print_rows(rows: list[dict]) -> None:
    for row in rows:
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
