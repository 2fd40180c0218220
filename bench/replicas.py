"""Read replicas (issue 22): similar-products throughput on the primary alone against the
primary and a streaming standby sharing the reads, and the standby's replication lag.

    .venv/bin/python bench/replicas.py                 # 20,000 x 512, 4 clients, 5 rounds of 6 s
    .venv/bin/python bench/replicas.py --reuse         # keep the rows and index of a last run

A private embedded server (``.cache/pgdata-replicas``, database ``vs_bench_replicas``, unless
``VISUALSEARCH_PGDATA`` / ``VISUALSEARCH_DB_NAME`` say otherwise) gets ``--n`` synthetic
clustered ``--d``-dimensional image vectors (``bench/query/database.py``, binary ``COPY``) and
the app's HNSW index (vector, m=16, ef_construction=64). A hot standby of it is made with
``pg_basebackup -R`` (``tests/storage/conftest.py``: ``Standby``) and added as the alias
``replica``, with ``visualsearch.storage.routing.ReplicaRouter`` on.

Throughput: ``--clients`` processes each call ``similar_products(pk, 8)`` (the real function:
the mean-vector k-NN statement, products loaded) for random products, for ``--seconds``, with
``READ_DATABASES = []`` (the primary alone), ``["replica", "default"]`` (the router spreads the
k-NN statements over both servers) and, printed only, ``["replica"]`` (all on the standby);
the modes take turns for ``--rounds`` rounds and each reports its median. Printed too: the
cost of one routing decision (``ProductImage.objects.db``) without and with a replica.

Lag: ``--writes`` single-row updates committed on the primary, each timed from the commit's
return until a poll of the standby (every 0.2 ms) sees the new value; the median.

Writes ``bench/results/replicas.json``: ``qps_primary_only``, ``qps_with_replica``,
``lag_ms_p50``. Both servers and the clients share this machine's cores, so the gain a
replica on its own machine would bring is not measured here: the clients and two servers
compete for the same CPUs (the output says how many).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.stats import median  # noqa: E402

OUTPUT = RESULTS_DIR / "replicas.json"
ROUTER = "visualsearch.storage.routing.ReplicaRouter"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="products (one image each)")
    parser.add_argument("--d", type=int, default=512, help="dimensions")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds a round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every mode")
    parser.add_argument("--writes", type=int, default=50, help="writes timed for the lag")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--centres", type=int, default=300)
    parser.add_argument("--categories", type=int, default=50)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--maintenance-work-mem", default="512MB")
    parser.add_argument("--parallel-workers", type=int, default=2)
    parser.add_argument("--reuse", action="store_true", help="keep rows and index loaded")
    parser.add_argument("--output", default=str(OUTPUT))
    return parser.parse_args()


def prepare(args) -> None:
    """Django on the private server, the catalog loaded and indexed."""
    os.environ.setdefault("VISUALSEARCH_PGDATA", str(BASE_DIR / ".cache" / "pgdata-replicas"))
    os.environ.setdefault("VISUALSEARCH_DB_NAME", "vs_bench_replicas")
    from bench.query import database, indexes

    database.setup_django(args.d)
    from django.conf import settings
    from django.core.management import call_command

    settings.DEBUG = False
    settings.VISUALSEARCH = {**settings.VISUALSEARCH, "FUSION": None, "TEXT_MODEL": None}
    call_command("migrate", verbosity=0)
    database.use_dimensions(args.d)
    database.load(args.n, args.d, args)
    indexes.build_index("vector", args.d, args)


def add_replica(standby) -> None:
    """The standby as the alias ``replica``, and the router on (no replica in use yet)."""
    from django.conf import settings
    from django.db import connections, router

    settings.DATABASES["replica"] = standby.settings_dict()
    connections.settings["replica"] = settings.DATABASES["replica"]
    settings.DATABASE_ROUTERS = [ROUTER]
    router._routers = None  # read DATABASE_ROUTERS again
    router.__dict__.pop("routers", None)


def close_connections() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()


def client(read_databases, pks, seconds, start_at, queue) -> None:
    """One client process: ``similar_products`` in a loop; puts ``(queries, {alias: k-NN
    statements})``."""
    from django.conf import settings
    from django.db import connections
    from django.test.utils import override_settings

    from visualsearch.query import similar_products

    # override_settings sends setting_changed: the app's settings and the router read it again
    override_settings(
        VISUALSEARCH={**settings.VISUALSEARCH, "READ_DATABASES": read_databases}
    ).enable()
    served = collections.Counter()

    def counting(alias):
        def wrapper(execute, sql, params, many, context):
            if "<=>" in sql:
                served[alias] += 1
            return execute(sql, params, many, context)

        return wrapper

    for alias in ("default", "replica"):
        connections[alias].execute_wrappers.append(counting(alias))
    rng = random.Random(os.getpid())
    for _ in range(30):  # warm: connections, prepared statements, caches
        similar_products(rng.choice(pks), 8)
    served.clear()
    time.sleep(max(0.0, start_at - time.monotonic()))
    end, count = start_at + seconds, 0
    while time.monotonic() < end:
        similar_products(rng.choice(pks), 8)
        count += 1
    queue.put((count, dict(served)))


def throughput(read_databases, pks, args) -> tuple[float, dict]:
    """Queries a second over ``--clients`` processes, and the k-NN statements per alias."""
    close_connections()  # the children open their own
    context = mp.get_context("fork")
    queue = context.Queue()
    start_at = time.monotonic() + 3.0  # after every client's warm-up
    processes = [
        context.Process(target=client, args=(read_databases, pks, args.seconds, start_at, queue))
        for _ in range(args.clients)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=args.seconds + 120) for _ in processes]
    for process in processes:
        process.join()
    served = collections.Counter()
    for _, counts in results:
        served.update(counts)
    return sum(count for count, _ in results) / args.seconds, dict(served)


def routing_cost(calls: int = 20_000) -> dict[str, float]:
    """Microseconds of one routing decision (``ProductImage.objects.db``: what each
    statement of the k-NN path asks), without replicas and with one (health check cached)."""
    import timeit

    from django.conf import settings
    from django.test.utils import override_settings

    from shop.catalog.models import ProductImage

    cost = {}
    for name, aliases in (("no replica", []), ("replica", ["replica"])):
        with override_settings(VISUALSEARCH={**settings.VISUALSEARCH, "READ_DATABASES": aliases}):
            assert ProductImage.objects.db in ("default", "replica")  # the first health check
            seconds = timeit.timeit(lambda: ProductImage.objects.db, number=calls)
        cost[name] = seconds / calls * 1e6
    close_connections()
    print(
        "one routing decision: "
        + ", ".join(f"{name} {value:.1f} us" for name, value in cost.items()),
        flush=True,
    )
    return cost


MODES = {"primary only": [], "primary + replica": ["replica", "default"], "replica": ["replica"]}


def measure_modes(pks: list, args) -> dict[str, list[float]]:
    """Queries a second of each mode, ``--rounds`` times, the modes taking turns (so that a
    neighbour's load on the shared machine falls on all of them alike)."""
    qps: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        for mode, read_databases in MODES.items():
            value, served = throughput(read_databases, pks, args)
            qps[mode].append(value)
            print(f"round {round_ + 1} {mode}: {value:.0f} queries/s, k-NN on {served}", flush=True)
    for mode, values in qps.items():
        shown = ", ".join(f"{value:.0f}" for value in values)
        print(f"{mode}: median {median(values):.0f} queries/s ({shown})")
    return qps


def replication_lag(standby, writes: int) -> list[float]:
    """Milliseconds from a committed write on the primary until the standby shows it."""
    from bench.query.database import raw_connection

    primary = raw_connection()
    primary.execute("CREATE TABLE IF NOT EXISTS bench_replica_probe (id int PRIMARY KEY, n int)")
    primary.execute("INSERT INTO bench_replica_probe VALUES (1, -1) ON CONFLICT DO NOTHING")
    lsn = primary.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
    standby.wait_replayed(lsn)
    lags = []
    with standby.connect() as replica:
        for i in range(writes):
            primary.execute("UPDATE bench_replica_probe SET n = %s WHERE id = 1", [i])
            committed = time.perf_counter()  # autocommit: the commit has returned
            while replica.execute("SELECT n FROM bench_replica_probe").fetchone()[0] != i:
                time.sleep(0.0002)
            lags.append((time.perf_counter() - committed) * 1000)
            time.sleep(0.02)
    primary.close()
    return lags


def main() -> None:
    args = parse_args()
    prepare(args)
    from django.db import connections

    from tests.storage.conftest import Standby

    started = time.perf_counter()
    standby = Standby(dict(connections["default"].settings_dict)).create()
    print(f"standby up in {time.perf_counter() - started:.1f} s ({standby.pgdata})", flush=True)
    try:
        add_replica(standby)
        from bench.query.database import raw_connection

        with raw_connection() as conn:
            lsn = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0]
        standby.wait_replayed(lsn)
        pks = list(range(1, args.n + 1))
        routing_cost()
        qps = measure_modes(pks, args)
        lags = replication_lag(standby, args.writes)
    finally:
        close_connections()
        standby.remove()
    lag = median(lags)
    alone, both = median(qps["primary only"]), median(qps["primary + replica"])
    print(
        f"replication lag over {len(lags)} writes: p50 {lag:.2f} ms, max {max(lags):.2f} ms\n"
        f"{args.clients} clients, {args.n} x {args.d}, machine {machine()}, load {load_average()}"
        "\nNote: the primary, the standby and the clients share this machine's"
        f" {os.cpu_count()} cores, so the replica cannot add CPU: the throughput gain is bounded"
        " by the CPUs, not by the router; a standby on its own machine adds its cores."
    )
    write_json(
        args.output,
        {
            "qps_primary_only": round(alone, 1),
            "qps_with_replica": round(both, 1),
            "lag_ms_p50": round(lag, 3),
        },
    )


if __name__ == "__main__":
    main()
