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
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
IMAGES = BASE_DIR.parent / "shared" / "data" / "fashion-products" / "images"
sys.path.insert(0, str(BASE_DIR))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post(url: str, data: bytes, name: str) -> tuple[float, dict]:
    body, content_type = multipart(data, name)
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    return (time.perf_counter() - started) * 1000, payload


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2, help="encoder threads, both sides")
    parser.add_argument("--server", choices=["gunicorn", "runserver"], default="gunicorn")
    args = parser.parse_args()
    photos = sorted(IMAGES.glob("*.jpg"))[: args.requests]
    if not photos:
        sys.exit(f"No photos under {IMAGES}")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "bench-only",
        "DJANGO_SECURE_SSL_REDIRECT": "0",  # plain HTTP on loopback (DEBUG off turns it on)
        "VISUALSEARCH_API_THROTTLE_RATE": "100000/minute",  # back-to-back runs stay under it
        "VISUALSEARCH_ENCODER_THREADS": str(args.threads),
    }
    os.environ.update({k: env[k] for k in ("DJANGO_SETTINGS_MODULE", "DJANGO_DEBUG")})
    os.environ["DJANGO_SECRET_KEY"] = env["DJANGO_SECRET_KEY"]
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
        server.terminate()
        server.wait(10)

    import django

    django.setup()
    from visualsearch.encoders import get_encoder
    from visualsearch.images import open_query_image

    encoder = get_encoder()
    decoded = [
        open_query_image(io.BytesIO(p.read_bytes()), max_bytes=2**25, max_pixels=10**8)
        for p in photos
    ]
    encoder.encode_images(decoded[:1])
    from visualsearch.display import attach_thumbnails
    from visualsearch.query import nearest_products

    encoder_ms, decode_ms, query_ms, thumbnail_ms = [], [], [], []
    for photo, image in zip(photos, decoded, strict=True):
        data = photo.read_bytes()
        started = time.perf_counter()
        open_query_image(io.BytesIO(data), max_bytes=2**25, max_pixels=10**8)
        decode_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        vector = encoder.encode_images([image])[0]
        encoder_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        products = nearest_products(vector, 12)
        query_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        attach_thumbnails(products)
        thumbnail_ms.append((time.perf_counter() - started) * 1000)

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "encoder": encoder.model_id,
        "args": vars(args),
        "api_ms": {"p50": statistics.median(api_ms), "p95": percentile(api_ms, 0.95)},
        "encoder_ms": {
            "p50": statistics.median(encoder_ms),
            "p95": percentile(encoder_ms, 0.95),
        },
        "results_per_request": statistics.median(counts),
        # The same steps in this process, to see where the overhead goes (medians).
        "steps_ms_p50": {
            "decode": statistics.median(decode_ms),
            "nearest_products": statistics.median(query_ms),
            "attach_thumbnails": statistics.median(thumbnail_ms),
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
    out = BASE_DIR / "bench" / "results" / f"api-latency-{args.server}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
