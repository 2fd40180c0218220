"""Capacity plan inputs, measured: halfvec HNSW build time and size, total table size, latency and
QPS per core at 512/768/1280 dimensions, and the extrapolation to 10M and 100M images.

    VISUALSEARCH_PGDATA=.cache/pgdata-bench .venv/bin/python bench/capacity.py
    VISUALSEARCH_PGDATA=.cache/pgdata-bench .venv/bin/python bench/capacity.py --check 1000000x512

For each dimension ``d`` at ``--n`` rows: the synthetic clustered vectors of
``bench/query_bench.py`` loaded into the app's real tables (binary ``COPY``), the app's halfvec
expression index built (``--m`` / ``--ef-construction``, the app's defaults 16 / 64), then
raw-SQL top-10 at ``hnsw.ef_search`` ``--ef-search``: p50 latency and recall@10 against exact
search, and QPS with 1 and 2 client processes (the machine has 2 cores, shared by the clients
and Postgres: QPS per core is the 2-client figure halved).

Per-row figures (index bytes; total bytes: heap, TOAST and every index; build seconds) give
the plan for 10M and 100M rows: sizes scale with rows, build time as ``n log n`` (an HNSW
insert walks a graph whose depth grows with ``log n``). ``--check NxD`` loads and builds a
larger size too and compares its measured build time and sizes with what the small size
predicted. The memory rule of thumb ``rows x (dim x 2 + 8) x 1.3`` bytes is printed next to
the measured index size.

Uses the database ``vs_bench_query`` like ``bench/query_bench.py`` (its tables are emptied).
Writes ``bench/results/capacity.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import machine, memory_gb, postgres  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.stats import median  # noqa: E402
from bench.common.tables import dict_table  # noqa: E402

#: Rows the plan is made for.
PLAN_ROWS = (10_000_000, 100_000_000)
MEASURED_COLUMNS = (
    "n d build_s index_mb total_mb rule_mb p50_ms recall qps_1client qps_2clients qps_per_core"
).split()
PLAN_COLUMNS = "rows d from_n index_gb total_gb rule_gb build_h_2cores".split()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="rows per dimension measured")
    parser.add_argument("--dims", default="512,768,1280")
    parser.add_argument("--check", default=None, help="a larger NxD measured to check the plan")
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, default=40)
    parser.add_argument("--maintenance-work-mem", default="6GB")
    parser.add_argument("--parallel-workers", type=int, default=2)
    parser.add_argument("--centres", type=int, default=3000)
    parser.add_argument("--categories", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--qps-seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true", help="as bench/query_bench.py --reuse")
    parser.add_argument("--output", default=str(RESULTS_DIR / "capacity.json"))
    return parser.parse_args()


def rule_bytes(rows: int, d: int) -> float:
    """The rule of thumb for a halfvec HNSW index: ``rows x (dim x 2 + 8) x 1.3``."""
    return rows * (d * 2 + 8) * 1.3


def measure(n: int, d: int, args) -> dict:
    """Load ``n x d``, build the halfvec index, time raw top-10 queries and QPS."""
    from bench.query import indexes
    from bench.query.database import load, use_dimensions
    from bench.query.measure import qps, recall
    from bench.query.paths import Raw
    from bench.query.synthetic import exact_top

    override = use_dimensions(d)
    try:
        vectors, _categories = load(n, d, args, "plain")
        build = indexes.build_index("halfvec", d, args)
        rng = np.random.default_rng(args.seed + 2)
        idx = rng.choice(n, args.queries, replace=False)
        truth = exact_top(vectors, vectors[idx], 10, exclude=idx)
        raw = Raw("halfvec", d)
        raw.configure(args.ef_search)
        for i in range(min(20, len(idx))):  # warm-up
            raw.query(vectors[idx[i]], int(idx[i]) + 1)
        latencies, recalls = [], []
        for i, row in enumerate(idx):
            started = time.perf_counter()
            found = raw.query(vectors[row], int(row) + 1)
            latencies.append((time.perf_counter() - started) * 1000)
            recalls.append(recall(found, truth[i]))
        raw.conn.close()
        ids, sample = idx[:50] + 1, vectors[idx[:50]]
        one, two = (
            qps("raw", "halfvec", d, args.ef_search, ids, sample, args.qps_seconds, clients=c)
            for c in (1, 2)
        )
        del vectors
    finally:
        override.disable()
    row = {
        "n": n,
        "d": d,
        "m": args.m,
        "ef_construction": args.ef_construction,
        "build_s": build["build_s"],
        "index_mb": build["index_mb"],
        "total_mb": build["table_mb"],  # heap, TOAST and every index
        "rule_mb": round(rule_bytes(n, d) / 2**20, 1),
        "ef_search": args.ef_search,
        "p50_ms": round(median(latencies), 3),
        "recall": round(float(np.mean(recalls)), 4),
        "qps_1client": one,
        "qps_2clients": two,
        "qps_per_core": round(two / 2, 1),
    }
    print(dict_table("Measured", [row], MEASURED_COLUMNS), flush=True)
    return row


def predicted_build_s(row: dict, rows: int) -> float:
    """``row``'s build time scaled to ``rows`` as ``n log n``."""
    n = row["n"]
    return row["build_s"] * rows / n * math.log(rows) / math.log(n)


def plan(measured: list[dict]) -> list[dict]:
    """Index, total and rule-of-thumb sizes and build hours at ``PLAN_ROWS``, per dimension,
    scaled from the largest size measured at that dimension."""
    largest = {}
    for row in measured:
        if row["n"] > largest.get(row["d"], {"n": 0})["n"]:
            largest[row["d"]] = row
    out = []
    for d, row in sorted(largest.items()):
        for rows in PLAN_ROWS:
            scale = rows / row["n"]
            out.append(
                {
                    "rows": rows,
                    "d": d,
                    "from_n": row["n"],
                    "index_gb": round(row["index_mb"] * scale / 1024, 1),
                    "total_gb": round(row["total_mb"] * scale / 1024, 1),
                    "rule_gb": round(rule_bytes(rows, d) / 2**30, 1),
                    "build_h_2cores": round(predicted_build_s(row, rows) / 3600, 1),
                }
            )
    return out


def check(measured: list[dict], larger: dict) -> dict:
    """The larger size's measured figures against what the small size of its dimension predicted."""
    small = next(row for row in measured if row["d"] == larger["d"])
    scale = larger["n"] / small["n"]
    predicted = {
        "build_s": round(predicted_build_s(small, larger["n"]), 1),
        "index_mb": round(small["index_mb"] * scale, 1),
        "total_mb": round(small["total_mb"] * scale, 1),
    }
    return {
        "from": {"n": small["n"], "d": small["d"]},
        "to": {"n": larger["n"], "d": larger["d"]},
        "predicted": predicted,
        "measured": {key: larger[key] for key in predicted},
        "measured_over_predicted": {
            key: round(larger[key] / predicted[key], 2) for key in predicted
        },
    }


def main() -> None:
    args = parse_args()
    from bench.query.database import setup_django

    dims = [int(x) for x in args.dims.split(",")]
    setup_django(dims[0])
    from django.conf import settings

    settings.DEBUG = False  # no query log: it formats every vector into the SQL it keeps
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    output = Path(args.output)
    results = {
        "machine": {**machine(), "memory_gb": memory_gb(), **postgres()},
        "args": vars(args),
        "measured": [],
    }
    for d in dims:
        results["measured"].append(measure(args.n, d, args))
        write_json(output, results, announce=False)  # what is measured so far
    if args.check:
        n, d = (int(x) for x in args.check.split("x"))
        if d not in dims:
            raise SystemExit(f"--check {args.check}: {d} is not among --dims {args.dims}")
        results["check_run"] = measure(n, d, args)
        results["check"] = check(results["measured"], results["check_run"])
        print("check:", results["check"])
    runs = results["measured"] + ([results["check_run"]] if args.check else [])
    results["plan"] = plan(runs)
    print(dict_table("Plan (extrapolated from the measured rows)", results["plan"], PLAN_COLUMNS))
    write_json(output, results)


if __name__ == "__main__":
    main()
