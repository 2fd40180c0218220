"""The demo shop served on loopback as in production, and requests to it."""

from __future__ import annotations

import os
import secrets
import socket
import uuid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def production_env(*, throttle_rate: str, threads: int, **extra: str) -> dict[str, str]:
    """``os.environ`` for ``shop.settings`` as in production (DEBUG off), on plain-HTTP loopback.

    No HTTPS redirect, secure-only cookies or HSTS; a fresh secret key; the API's throttle at
    ``throttle_rate`` (raised, so that a benchmark measures the shop, not the rate limit) and
    ``threads`` encoder threads per process. ``extra`` variables are added last.
    """
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "0",
        "DJANGO_SESSION_COOKIE_SECURE": "0",
        "DJANGO_CSRF_COOKIE_SECURE": "0",
        "DJANGO_SECURE_HSTS_SECONDS": "0",
        "VISUALSEARCH_API_THROTTLE_RATE": throttle_rate,
        "VISUALSEARCH_ENCODER_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def multipart(data: bytes, filename: str, field: str = "image") -> tuple[bytes, str]:
    """``(body, Content-Type)`` of a form upload of one JPEG file."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"
