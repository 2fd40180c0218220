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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
IMAGES = BASE_DIR.parent / "shared" / "data" / "fashion-products" / "images"
OUT = BASE_DIR / "bench" / "results" / "load-test.json"
sys.path.insert(0, str(BASE_DIR))

LOADED = re.compile(r"INFO/ForkPoolWorker-\d+\] visualsearch: .* loaded")
KINDS = {"product page": 0.3, "similar API": 0.3, "text API": 0.25, "image API": 0.15}
QUERIES = [
    "red dress",
    "blue jeans",
    "black leather handbag",
    "white sneakers",
    "running shoes",
    "floral summer dress",
    "men's watch",
    "striped t-shirt",
    "denim jacket",
    "sunglasses",
    "wool scarf",
    "pink top for girls",
    "formal shirt",
    "sports socks",
    "gold earrings",
    "backpack",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Target:
    """What the clients ask for: products of the demo catalog and query photos."""

    def __init__(self, base_url: str, seed: int = 0) -> None:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
        import django

        django.setup()
        from shop.catalog.models import Product

        self.base_url = base_url
        self.products = list(Product.objects.values_list("pk", "slug"))
        if not self.products:
            sys.exit("The demo database has no products: run `make demo` once.")
        photos = sorted(IMAGES.glob("*.jpg"))
        if not photos:
            sys.exit(f"No photos under {IMAGES}")
        self.photos = [(p.name, p.read_bytes()) for p in random.Random(seed).sample(photos, 200)]

    def request(self, kind: str, rng: random.Random) -> urllib.request.Request:
        pk, slug = rng.choice(self.products)
        if kind == "product page":
            return urllib.request.Request(f"{self.base_url}/products/{slug}/")
        if kind == "similar API":
            return urllib.request.Request(f"{self.base_url}/api/products/{pk}/similar/")
        if kind == "text API":
            query = urllib.parse.urlencode({"q": rng.choice(QUERIES)})
            return urllib.request.Request(f"{self.base_url}/api/search/text/?{query}")
        name, data = rng.choice(self.photos)
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n'
            ).encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return urllib.request.Request(
            f"{self.base_url}/api/search/image/",
            body,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )


def send(request: urllib.request.Request) -> tuple[int, str, int | None]:
    """Send one request; (status, error text, number of results for API answers)."""
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            count = None
            if response.headers.get_content_type() == "application/json":
                count = json.loads(body)["count"]
            return response.status, "", count
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:200].decode(errors="replace"), None
    except Exception as exc:  # connection refused or reset, timeout: the server failed us
        return 0, f"{type(exc).__name__}: {exc}", None


def run_clients(
    target: Target, clients: int, duration: float, kinds: dict[str, float], seed: int
) -> tuple[list[dict], float]:
    """``clients`` threads sending requests back to back until ``duration`` has passed (one
    request each when ``duration`` is 0)."""
    records: list[dict] = []
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + duration

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        names, weights = list(kinds), list(kinds.values())
        first = True
        while first or time.monotonic() < deadline:
            first = False
            kind = rng.choices(names, weights)[0]
            request = target.request(kind, rng)
            started = time.perf_counter()
            status, error, count = send(request)
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                records.append(
                    {"kind": kind, "status": status, "ms": elapsed, "error": error, "count": count}
                )

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, time.monotonic() - start


def memory(pid: int) -> dict:
    """RSS and PSS (MB) of a process and its children, and per process."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss_mb": 0.0, "pss_mb": 0.0, "processes": []}
    rows = []
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rows.append(
            {
                "pid": process.pid,
                "rss_mb": round(info.rss / 2**20, 1),
                "pss_mb": round(getattr(info, "pss", info.rss) / 2**20, 1),
            }
        )
    return {
        "rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
        "pss_mb": round(sum(r["pss_mb"] for r in rows), 1),
        "processes": rows,
    }


def cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def summarise(records: list[dict], elapsed: float) -> dict:
    kinds = {}
    for kind in [*KINDS, "all"]:
        rows = [r for r in records if kind == "all" or r["kind"] == kind]
        if not rows:
            continue
        ok = [r["ms"] for r in rows if 200 <= r["status"] < 300]
        counts = [r["count"] for r in rows if r["count"] is not None]
        kinds[kind] = {
            "requests": len(rows),
            "per_second": round(len(rows) / elapsed, 2),
            "ok": len(ok),
            "429": sum(r["status"] == 429 for r in rows),
            "other_4xx": sum(400 <= r["status"] < 500 and r["status"] != 429 for r in rows),
            "5xx": sum(r["status"] >= 500 for r in rows),
            "connection_errors": sum(r["status"] == 0 for r in rows),
            "p50_ms": round(statistics.median(ok), 1) if ok else None,
            "p95_ms": round(percentile(ok, 0.95), 1) if ok else None,
            "max_ms": round(max(ok), 1) if ok else None,
            "api_answers_with_results": (
                f"{sum(1 for c in counts if c)}/{len(counts)}" if counts else None
            ),
        }
    return kinds


def wait_until_serving(url: str, server: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status, _error, _count = send(urllib.request.Request(url))
        if status == 200:
            return
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"gunicorn did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def main() -> None:
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

    from tests.services import RedisServer

    redis = RedisServer().start()
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="vs-load-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Plain http on loopback: no HTTPS redirect or secure-only cookies.
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_SESSION_COOKIE_SECURE": "0",
        "DJANGO_CSRF_COOKIE_SECURE": "0",
        "DJANGO_SECURE_HSTS_SECONDS": "0",
        "VISUALSEARCH_ENCODER_THREADS": str(args.threads),
        "VISUALSEARCH_API_THROTTLE_RATE": args.throttle_rate,
        "CELERY_BROKER_URL": redis.url,
        "REDIS_URL": redis.url,
        "CACHE_URL": redis.url[:-1] + "1",
        "PYTHONUNBUFFERED": "1",
    }
    base_url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    web_log, worker_log = logs / "gunicorn.log", logs / "worker.log"
    with open(web_log, "w") as handle:
        web = subprocess.Popen(
            [
                str(bin_dir / "gunicorn"),
                "shop.wsgi:application",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(args.web_workers),
                "--timeout",
                "120",
                "--access-logfile",
                str(logs / "access.log"),
            ],
            cwd=BASE_DIR,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    with open(worker_log, "w") as handle:
        worker = subprocess.Popen(
            [str(bin_dir / "celery"), "-A", "shop", "worker", "--loglevel=info", "--concurrency=1"],
            cwd=BASE_DIR,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        target = Target(base_url, args.seed)
        from visualsearch.conf import visualsearch_settings

        encoders = 2 if visualsearch_settings.TEXT_MODEL else 1
        wait_until_serving(f"{base_url}/api/schema/", web, web_log, 180)
        while len(LOADED.findall(worker_log.read_text())) < encoders:  # warmed up
            if worker.poll() is not None:
                sys.exit(f"the Celery worker stopped:\n{worker_log.read_text()[-3000:]}")
            time.sleep(0.5)
        memory_started = {"web": memory(web.pid), "worker": memory(worker.pid)}

        # Warm-up, not counted: each gunicorn worker loads its encoders on first use.
        warm_started = time.monotonic()
        warm_records = []
        for round_ in range(4):
            for kind in KINDS:
                warm_records += run_clients(
                    target, args.web_workers, 0, {kind: 1}, args.seed + 100 + round_
                )[0]
        warm_seconds = time.monotonic() - warm_started

        memory_before = {"web": memory(web.pid), "worker": memory(worker.pid)}
        load_before = os.getloadavg()
        cpu_before = {
            "web": cpu_seconds(web.pid),
            "worker": cpu_seconds(worker.pid),
            "clients": sum(psutil.Process().cpu_times()[:2]),
        }
        psutil.cpu_percent()  # starts the machine-wide measurement
        print(
            f"{args.clients} clients, {args.duration:.0f}s, gunicorn {args.web_workers} workers; "
            f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs…",
            flush=True,
        )
        records, elapsed = run_clients(target, args.clients, args.duration, KINDS, args.seed)
        machine_busy = psutil.cpu_percent()
        load_after = os.getloadavg()
        cpu_used = {
            "web": round(cpu_seconds(web.pid) - cpu_before["web"], 1),
            "worker": round(cpu_seconds(worker.pid) - cpu_before["worker"], 1),
            "clients": round(sum(psutil.Process().cpu_times()[:2]) - cpu_before["clients"], 1),
        }
        # What the machine's other processes (other people's tests, benchmarks) took meanwhile.
        busy_seconds = machine_busy / 100 * elapsed * (os.cpu_count() or 1)
        cpu_used["other_processes"] = round(busy_seconds - sum(cpu_used.values()), 1)
        memory_after = {"web": memory(web.pid), "worker": memory(worker.pid)}
    finally:
        web.terminate()
        worker.terminate()
        for process in (web, worker):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.stop()

    kinds = summarise(records, elapsed)
    errors = sorted({r["error"] for r in records if r["status"] == 0 or r["status"] >= 500})
    result = {
        "command": "python bench/load_test.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": {
            k: os.path.relpath(v) if isinstance(v, Path) else v for k, v in vars(args).items()
        },
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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    header = (
        f"{'kind':14s} {'requests':>8s} {'req/s':>6s} {'ok':>6s} {'429':>5s} {'4xx':>5s} "
        f"{'5xx':>5s} {'conn':>5s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}"
    )
    print(header)
    for kind, row in kinds.items():
        print(
            f"{kind:14s} {row['requests']:8d} {row['per_second']:6.2f} {row['ok']:6d} "
            f"{row['429']:5d} {row['other_4xx']:5d} {row['5xx']:5d} "
            f"{row['connection_errors']:5d} {row['p50_ms'] or 0:8.1f} {row['p95_ms'] or 0:8.1f} "
            f"{row['max_ms'] or 0:8.1f}"
        )
    print(f"memory, MB         {'started':>16s} {'before':>16s} {'after':>16s}   (RSS / PSS)")
    for name, label in (("web", "gunicorn (all)"), ("worker", "celery worker")):
        cells = [
            f"{point[name]['rss_mb']:7.0f} / {point[name]['pss_mb']:6.0f}"
            for point in (memory_started, memory_before, memory_after)
        ]
        print(f"{label:18s} {cells[0]:>16s} {cells[1]:>16s} {cells[2]:>16s}")
    print(
        f"load average {load_before[0]:.2f} → {load_after[0]:.2f}, machine CPU busy "
        f"{machine_busy:.0f}%; CPU seconds of {elapsed * (os.cpu_count() or 1):.0f}: "
        + ", ".join(f"{name} {value}" for name, value in cpu_used.items())
    )
    if errors:
        print("errors:", *errors[:5], sep="\n  ")
    print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
    main()
