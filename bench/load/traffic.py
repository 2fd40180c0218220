"""The traffic: what the clients ask for, how they send it, and the per-kind summary."""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from bench.common import DATA_DIR
from bench.common.server import multipart
from bench.common.shop import setup_django
from bench.common.stats import median, percentile

IMAGES = DATA_DIR / "images"
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


class Target:
    """What the clients ask for: products of the demo catalog and query photos."""

    def __init__(self, base_url: str, seed: int = 0) -> None:
        setup_django()
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
        body, content_type = multipart(data, name)
        return urllib.request.Request(
            f"{self.base_url}/api/search/image/", body, {"Content-Type": content_type}
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


def summarise(records: list[dict], elapsed: float) -> dict:
    """Requests, rates, status counts and latencies of the successful ones, per kind."""
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
            "p50_ms": round(median(ok), 1) if ok else None,
            "p95_ms": round(percentile(ok, 0.95), 1) if ok else None,
            "max_ms": round(max(ok), 1) if ok else None,
            "api_answers_with_results": (
                f"{sum(1 for c in counts if c)}/{len(counts)}" if counts else None
            ),
        }
    return kinds
