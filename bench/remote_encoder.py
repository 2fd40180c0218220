"""Photo-search API latency with the photo encoded in the web process or by a KServe v2 server.

    .venv/bin/python bench/remote_encoder.py [--requests 40] [--catalog 300] [--threads 1]

Builds (once) a small catalog in its own database (``vs_remote_encoder_bench`` on the
embedded server): ``--catalog`` fashion photos embedded by the demo's EfficientNet-Lite0,
written ready in bulk. Starts ``python -m visualsearch.contrib.kserve_model`` with the same
settings (same encoder, ``--threads`` encoder threads, as the web side) on a free port, then
posts ``--requests`` other photos to ``POST /api/search/image/`` through Django's test client,
in blocks that alternate ``QUERY_ENCODER`` "local" and "remote" (each block starts with one
untimed request). Also times the encoder alone, in-process against the endpoint, for the same
decoded photos, and checks that both ways return the same products. Both processes share
this machine's cores: the numbers are the protocol's cost, not a GPU host's gain. Writes
``bench/results/remote-encoder.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402
from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.processes import stop  # noqa: E402
from bench.common.results import RESULTS_DIR, plain_args, write_json  # noqa: E402
from bench.common.server import free_port  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.common.stats import median, percentile, rounded, timed  # noqa: E402

DATABASE = "vs_remote_encoder_bench"
URL = "/api/search/image/"


def photo_paths() -> list[Path]:
    with open(DATA_DIR / "products.csv", newline="") as handle:
        return [DATA_DIR / row["file"] for row in csv.DictReader(handle)]


def build_catalog(paths: list[Path]) -> int:
    """The catalog: one product per photo, its vector written ready (bulk, no files)."""
    from django.core.management import call_command

    from shop.catalog.models import Category, Product, ProductImage
    from visualsearch.encoders import get_encoder
    from visualsearch.ingest.images import open_query_image

    call_command("migrate", verbosity=0)
    if ProductImage.objects.filter(embedding_status="ready").count() >= len(paths):
        return 0
    ProductImage.objects.all().delete()
    Product.objects.all().delete()
    category, _ = Category.objects.get_or_create(slug="bench", defaults={"name": "Bench"})
    encoder = get_encoder()
    products = Product.objects.bulk_create(
        Product(name=path.stem, slug=f"bench-{path.stem}", category=category, price=10)
        for path in paths
    )
    images = [open_query_image(io.BytesIO(path.read_bytes())) for path in paths]
    vectors = [row for start in range(0, len(images), 32)
               for row in encoder.encode_images(images[start : start + 32])]  # fmt: skip
    ProductImage.objects.bulk_create(
        ProductImage(
            product=product,
            category=category,
            image=f"products/{path.name}",
            embedding=vector,
            embedding_status="ready",
            embedding_model=encoder.model_id,
        )
        for product, path, vector in zip(products, paths, vectors, strict=True)
    )
    return len(paths)


def start_server(threads: int) -> tuple[subprocess.Popen, str]:
    """The KServe v2 model server with the shop's settings on a free port, once ready."""
    from visualsearch.encoders.remote import KServeV2Encoder

    port = free_port()
    env = {**os.environ, "VISUALSEARCH_ENCODER_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "visualsearch.contrib.kserve_model"]
    command += ["--http_port", str(port), "--enable_grpc", "false"]
    server = subprocess.Popen(
        command, cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    probe = KServeV2Encoder(url, connect_timeout=0.5)
    deadline = time.monotonic() + 120
    while not probe.ready():
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server, timeout=5)
            sys.exit("The KServe server did not start.")
        time.sleep(0.3)
    return server, url


def search_blocks(queries: list[Path], url: str, block: int) -> dict[str, list]:
    """``{"local": [(ms, ids)], "remote": [...]}`` over alternating blocks of requests."""
    from django.conf import settings
    from django.test import Client, override_settings

    client = Client()
    remote = {"url": url, "timeout": 10.0, "connect_timeout": 1.0}
    ways = {
        "local": {**settings.VISUALSEARCH, "QUERY_ENCODER": "local"},
        "remote": {**settings.VISUALSEARCH, "QUERY_ENCODER": "remote", "REMOTE_ENCODER": remote},
    }
    found: dict[str, list] = {"local": [], "remote": []}

    def post(path: Path) -> list:
        response = client.post(URL, {"image": io.BytesIO(path.read_bytes())})
        if response.status_code != 200:
            sys.exit(f"{URL} answered {response.status_code}: {response.content[:300]!r}")
        return [row["id"] for row in response.json()["results"]]

    for number, start in enumerate(range(0, len(queries), block)):
        order = ["local", "remote"] if number % 2 == 0 else ["remote", "local"]
        for way in order:
            with override_settings(VISUALSEARCH=ways[way]):
                post(queries[start])  # untimed: the encoder (or connection) of this block
                for path in queries[start : start + block]:
                    found[way].append(timed(post, path))
    return found


def encoder_alone(queries: list[Path], url: str) -> dict[str, list[float]]:
    """Milliseconds of ``encode_images([photo])`` in-process and through the endpoint."""
    from visualsearch.encoders import get_encoder
    from visualsearch.encoders.remote import KServeV2Encoder
    from visualsearch.ingest.images import open_query_image

    local, remote = get_encoder(), KServeV2Encoder(url)
    images = [open_query_image(io.BytesIO(path.read_bytes())) for path in queries]
    local.encode_images(images[:1]), remote.encode_images(images[:1])
    times: dict[str, list[float]] = {"local": [], "remote": []}
    for image in images:
        times["local"].append(timed(local.encode_images, [image])[0])
        times["remote"].append(timed(remote.encode_images, [image])[0])
    return times


def summary(values: list[float]) -> dict:
    return {"p50": rounded(median(values), 2), "p95": rounded(percentile(values, 0.95), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--catalog", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="encoder threads, both sides")
    parser.add_argument("--block", type=int, default=10, help="requests per block")
    args = parser.parse_args()
    os.environ["VISUALSEARCH_ENCODER_THREADS"] = str(args.threads)
    os.environ["VISUALSEARCH_DB_NAME"] = DATABASE
    setup_django(DATABASE, visualsearch={"API_THROTTLE_RATE": "100000/minute"})
    paths = photo_paths()
    catalog, queries = paths[: args.catalog], paths[args.catalog : args.catalog + args.requests]
    added = build_catalog(catalog)
    print(f"catalog: {len(catalog)} photos ({added} embedded now)", flush=True)
    server, url = start_server(args.threads)
    try:
        found = search_blocks(queries, url, args.block)
        alone = encoder_alone(queries, url)
    finally:
        stop(server, timeout=10)
    from visualsearch.encoders import get_encoder

    api = {way: [ms for ms, _ids in rows] for way, rows in found.items()}
    same = sum(a[1] == b[1] for a, b in zip(found["local"], found["remote"], strict=True))
    result = {
        "machine": machine(),
        "load_average": load_average(),
        "encoder": get_encoder().model_id,
        "args": plain_args(args),
        "api_photo_search_ms": {way: summary(values) for way, values in api.items()},
        "encoder_alone_ms": {way: summary(values) for way, values in alone.items()},
        "remote_minus_local_api_p50_ms": rounded(median(api["remote"]) - median(api["local"]), 2),
        "same_results": f"{same}/{len(found['local'])}",
        "note": "web process and KServe server on the same CPU machine (no GPU)",
    }
    for way in ("local", "remote"):
        print(f"  {way:6} API p50 {result['api_photo_search_ms'][way]['p50']:7.2f} ms   "
              f"encoder alone p50 {result['encoder_alone_ms'][way]['p50']:7.2f} ms")  # fmt: skip
    print(f"  same products for {result['same_results']} photos")
    write_json(RESULTS_DIR / "remote-encoder.json", result)


if __name__ == "__main__":
    main()
