"""Image-search API latency against the encoder alone, for the same photos.

    .venv/bin/python bench/api_latency.py [--requests 40] [--server gunicorn|runserver]

Needs the demo database (``make demo`` once). Starts the demo shop on a free port (``gunicorn``
with one sync worker, as in production, or Django's development server ``runserver``; DEBUG
off, encoder threads as in a worker), posts catalog photos to ``POST /api/search/image/`` one
at a time, and times in this
process, for the same photos, what the encoder alone takes (decode excluded, same thread
count). Prints medians and the overhead (API p50 - encoder p50), and writes
``bench/results/api-latency.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402
from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.processes import stop  # noqa: E402
from bench.common.results import RESULTS_DIR, write_json  # noqa: E402
from bench.common.server import free_port, multipart, production_env  # noqa: E402
from bench.common.shop import setup_django  # noqa: E402
from bench.common.stats import median, percentile, timed  # noqa: E402

IMAGES = DATA_DIR / "images"


def post(url: str, data: bytes, name: str) -> tuple[float, dict]:
    """Milliseconds and JSON answer of one image search."""
    body, content_type = multipart(data, name)
    request = urllib.request.Request(url, body, {"Content-Type": content_type})

    def send() -> dict:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    return timed(send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="encoder threads, both sides")
    parser.add_argument("--server", choices=["gunicorn", "runserver"], default="gunicorn")
    args = parser.parse_args()
    photos = sorted(IMAGES.glob("*.jpg"))[: args.requests]
    if not photos:
        sys.exit(f"No photos under {IMAGES}")
    # The throttle raised: back-to-back runs stay under it.
    env = production_env(throttle_rate="100000/minute", threads=args.threads)
    # The encoder timed in this process runs with the server's settings.
    for name in ("DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG", "DJANGO_SECRET_KEY"):
        os.environ[name] = env[name]
    os.environ["VISUALSEARCH_ENCODER_THREADS"] = env["VISUALSEARCH_ENCODER_THREADS"]
    port = free_port()
    command = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
    if args.server == "gunicorn":
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        command = [gunicorn, "shop.wsgi:application", "--bind", f"127.0.0.1:{port}", "-w", "1"]
    server = subprocess.Popen(
        command,
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api/search/image/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                post(url, photos[0].read_bytes(), photos[0].name)  # also loads the encoder
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("The server did not start (is the demo database there?)")
                time.sleep(0.5)
        api_ms, counts = [], []
        for photo in photos:
            elapsed, payload = post(url, photo.read_bytes(), photo.name)
            api_ms.append(elapsed)
            counts.append(payload["count"])
    finally:
        stop(server, timeout=10)

    setup_django()
    from visualsearch.encoders import get_encoder
    from visualsearch.ingest.images import open_query_image

    encoder = get_encoder()
    decoded = [
        open_query_image(io.BytesIO(p.read_bytes()), max_bytes=2**25, max_pixels=10**8)
        for p in photos
    ]
    encoder.encode_images(decoded[:1])
    from visualsearch.query import nearest_products
    from visualsearch.web.display import attach_thumbnails

    encoder_ms, decode_ms, query_ms, thumbnail_ms = [], [], [], []
    for photo, image in zip(photos, decoded, strict=True):
        data = photo.read_bytes()
        ms, _ = timed(open_query_image, io.BytesIO(data), max_bytes=2**25, max_pixels=10**8)
        decode_ms.append(ms)
        ms, vectors = timed(encoder.encode_images, [image])
        encoder_ms.append(ms)
        ms, products = timed(nearest_products, vectors[0], 12)
        query_ms.append(ms)
        thumbnail_ms.append(timed(attach_thumbnails, products)[0])

    result = {
        "machine": machine(),
        "load_average": load_average(),
        "encoder": encoder.model_id,
        "args": vars(args),
        "api_ms": {"p50": median(api_ms), "p95": percentile(api_ms, 0.95)},
        "encoder_ms": {
            "p50": median(encoder_ms),
            "p95": percentile(encoder_ms, 0.95),
        },
        "results_per_request": median(counts),
        # The same steps in this process, to see where the overhead goes (medians).
        "steps_ms_p50": {
            "decode": median(decode_ms),
            "nearest_products": median(query_ms),
            "attach_thumbnails": median(thumbnail_ms),
        },
    }
    result["overhead_ms_p50"] = result["api_ms"]["p50"] - result["encoder_ms"]["p50"]
    print(
        f"encoder {encoder.model_id}, {len(photos)} photos, {args.threads} threads, {args.server}"
    )
    print(f"  API (HTTP, decode, encode, HNSW query, JSON) p50 {result['api_ms']['p50']:.1f} ms")
    print(f"  encoder alone                              p50 {result['encoder_ms']['p50']:.1f} ms")
    print(f"  overhead                                   p50 {result['overhead_ms_p50']:.1f} ms")
    for step, value in result["steps_ms_p50"].items():
        print(f"    of which {step:31s} p50 {value:.1f} ms")
    write_json(RESULTS_DIR / f"api-latency-{args.server}.json", result)


if __name__ == "__main__":
    main()
