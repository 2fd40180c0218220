"""Read-your-writes with read replicas: the client that just wrote reads from the primary.

Add ``"visualsearch.web.pinning.PrimaryPinningMiddleware"`` to ``MIDDLEWARE`` next to
:class:`visualsearch.storage.routing.ReplicaRouter`. Each request starts with a fresh pinning
state; a request that writes a table the replicas serve reads from the primary for the rest
of the request (the router notices the write) and its response sets a cookie that keeps
the client's next requests on the primary for ``PIN_PRIMARY_SECONDS``, by which time the
replicas have caught up (or are skipped for lagging).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from visualsearch.conf import visualsearch_settings
from visualsearch.storage import routing

#: The cookie that pins a client to the primary; its value is the Unix time it ends at.
COOKIE = "visualsearch_primary"


class PrimaryPinningMiddleware:
    """Pins the requests of a client that wrote a moment ago to the primary database."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not routing.replicas():
            return self.get_response(request)
        with routing.request_scope(pinned=pinned(request)) as wrote:
            response = self.get_response(request)
            if wrote():
                seconds = float(visualsearch_settings.PIN_PRIMARY_SECONDS)
                response.set_cookie(
                    COOKIE,
                    str(int(time.time() + seconds) + 1),
                    max_age=max(1, round(seconds)),
                    httponly=True,
                    samesite="Lax",
                    secure=settings.SESSION_COOKIE_SECURE,
                )
        return response


def pinned(request: HttpRequest) -> bool:
    """Whether ``request`` carries a pinning cookie that has not run out (a client's clock
    or a forged value cannot pin it for longer than ``PIN_PRIMARY_SECONDS``)."""
    try:
        until = float(request.COOKIES.get(COOKIE, 0))
    except ValueError:
        return False
    now = time.time()
    return now < until <= now + float(visualsearch_settings.PIN_PRIMARY_SECONDS) + 1
