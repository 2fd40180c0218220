"""Bounded load test of the demo shop behind gunicorn: a fixed number of clients for a fixed time.

    .venv/bin/python bench/load_test.py [--duration 60] [--clients 8] [--web-workers 3]

Needs the demo database (``make demo`` once: 6,573 products embedded with the offline
encoder); the traffic only reads it. Starts, on loopback: a private Redis (broker and cache),
gunicorn with ``--web-workers`` sync workers (DEBUG off, one encoder thread each, the API's
throttle raised with ``VISUALSEARCH_API_THROTTLE_RATE`` so that the test measures the shop,
not the rate limit) and a Celery worker (idle: nothing is uploaded, the database is the demo's).
After a warm-up that is not counted (every gunicorn worker loads its encoders on first use),
``--clients`` threads send requests back to back for ``--duration`` seconds (at most 120), each
picking one of:

- ``product page``: ``GET /products/<slug>/``, HTML with the similar-products widget;
- ``similar API``: ``GET /api/products/<id>/similar/``;
- ``text API``: ``GET /api/search/text/?q=…`` (hybrid text search);
- ``image API``: ``POST /api/search/image/`` with a catalog photo (decode, encode, HNSW).

Prints requests served, p50/p95 per kind, status counts (target: no 5xx) and the resident
memory (RSS, and PSS: shared pages counted once) of the web and worker processes before and
after the run, with the machine's load; writes ``bench/results/load-test.json``.

The traffic is in :mod:`bench.load.traffic`, the servers in :mod:`bench.load.servers`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import machine  # noqa: E402
from bench.common.results import RESULTS_DIR, plain_args, shown, write_json  # noqa: E402
from bench.load.servers import shop_servers  # noqa: E402
from bench.load.traffic import KINDS, Target, run_clients, summarise  # noqa: E402

OUT = RESULTS_DIR / "load-test.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds, at most 120")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--web-workers", type=int, default=3, help="gunicorn sync workers")
    parser.add_argument("--threads", type=int, default=1, help="encoder threads per process")
    parser.add_argument("--throttle-rate", default="1000000/minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not 0 < args.duration <= 120:
        parser.error("--duration must be between 0 and 120 seconds")
    return args


def own_cpu_seconds() -> float:
    """CPU seconds of this process (the client threads)."""
    return sum(psutil.Process().cpu_times()[:2])


def main() -> None:
    args = parse_args()
    with shop_servers(args) as servers:
        target = Target(servers.base_url, args.seed)
        from visualsearch.conf import visualsearch_settings

        servers.wait_until_ready(encoders=2 if visualsearch_settings.TEXT_MODEL else 1)
        memory_started = servers.memory()

        # Warm-up, not counted: each gunicorn worker loads its encoders on first use.
        warm_started = time.monotonic()
        warm_records = []
        for round_ in range(4):
            for kind in KINDS:
                warm_records += run_clients(
                    target, args.web_workers, 0, {kind: 1}, args.seed + 100 + round_
                )[0]
        warm_seconds = time.monotonic() - warm_started

        memory_before = servers.memory()
        load_before = os.getloadavg()
        cpu_before = {**servers.cpu_seconds(), "clients": own_cpu_seconds()}
        psutil.cpu_percent()  # starts the machine-wide measurement
        print(
            f"{args.clients} clients, {args.duration:.0f}s, gunicorn {args.web_workers} workers; "
            f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs…",
            flush=True,
        )
        records, elapsed = run_clients(target, args.clients, args.duration, KINDS, args.seed)
        machine_busy = psutil.cpu_percent()
        load_after = os.getloadavg()
        cpu_after = {**servers.cpu_seconds(), "clients": own_cpu_seconds()}
        cpu_used = {name: round(cpu_after[name] - cpu_before[name], 1) for name in cpu_before}
        # What the machine's other processes (other people's tests, benchmarks) took meanwhile.
        busy_seconds = machine_busy / 100 * elapsed * (os.cpu_count() or 1)
        cpu_used["other_processes"] = round(busy_seconds - sum(cpu_used.values()), 1)
        memory_after = servers.memory()

    kinds = summarise(records, elapsed)
    errors = sorted({r["error"] for r in records if r["status"] == 0 or r["status"] >= 500})
    result = {
        "command": "python bench/load_test.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "args": plain_args(args),
        "mix": KINDS,
        "server": f"gunicorn {args.web_workers} sync workers, DEBUG off, Redis cache",
        "seconds": round(elapsed, 1),
        "warm_up": {
            "requests": len(warm_records),
            "seconds": round(warm_seconds, 1),
            "5xx": sum(r["status"] >= 500 for r in warm_records),
        },
        "kinds": kinds,
        "errors": errors[:20],
        "load_average": {"before": load_before, "after": load_after},
        "machine_cpu_busy_percent": machine_busy,
        "cpu_seconds_during_run": cpu_used,
        "memory_mb": {
            "started": memory_started,
            "before": memory_before,
            "after": memory_after,
        },
    }
    write_json(args.out, result, announce=False)
    print_summary(result)
    print(f"wrote {shown(args.out)}")


def print_summary(result: dict) -> None:
    """Requests and latencies per kind, memory, the machine's load and CPU use."""
    header = (
        f"{'kind':14s} {'requests':>8s} {'req/s':>6s} {'ok':>6s} {'429':>5s} {'4xx':>5s} "
        f"{'5xx':>5s} {'conn':>5s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}"
    )
    print(header)
    for kind, row in result["kinds"].items():
        print(
            f"{kind:14s} {row['requests']:8d} {row['per_second']:6.2f} {row['ok']:6d} "
            f"{row['429']:5d} {row['other_4xx']:5d} {row['5xx']:5d} "
            f"{row['connection_errors']:5d} {row['p50_ms'] or 0:8.1f} {row['p95_ms'] or 0:8.1f} "
            f"{row['max_ms'] or 0:8.1f}"
        )
    memory = result["memory_mb"]
    print(f"memory, MB         {'started':>16s} {'before':>16s} {'after':>16s}   (RSS / PSS)")
    for name, label in (("web", "gunicorn (all)"), ("worker", "celery worker")):
        cells = [
            f"{point[name]['rss_mb']:7.0f} / {point[name]['pss_mb']:6.0f}"
            for point in (memory["started"], memory["before"], memory["after"])
        ]
        print(f"{label:18s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s}")
    load, cpu_used = result["load_average"], result["cpu_seconds_during_run"]
    cpu_total = result["seconds"] * (os.cpu_count() or 1)
    print(
        f"load average {load['before'][0]:.2f} → {load['after'][0]:.2f}, machine CPU busy "
        f"{result['machine_cpu_busy_percent']:.0f}%; CPU seconds of {cpu_total:.0f}: "
        + ", ".join(f"{name} {value}" for name, value in cpu_used.items())
    )
    if result["errors"]:
        print("errors:", *result["errors"][:5], sep="\n  ")


if __name__ == "__main__":
    main()
