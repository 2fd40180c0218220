"""The API's default throttle: ``API_THROTTLE_RATE`` per user, else per client address."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from visualsearch.conf import visualsearch_settings

logger = logging.getLogger(__name__)


class SearchRateThrottle(SimpleRateThrottle):
    """One budget for all visualsearch endpoints, counted in the ``CACHE_ALIAS`` cache.

    The rate is ``VISUALSEARCH["API_THROTTLE_RATE"]`` in DRF's ``"N/period"`` form (``None``
    turns throttling off). Signed-in users are counted by id, others by address: the
    connection's ``REMOTE_ADDR``, never a header the client writes itself. Behind proxies set
    DRF's ``REST_FRAMEWORK["NUM_PROXIES"]`` to their number: the address is then the one the
    outermost proxy saw, read from ``X-Forwarded-For``. When the cache cannot be reached the
    request is let through and a warning logged: a throttle must not take search down with
    Redis. The search page of the host shares the budget (:mod:`visualsearch.web.guards`).
    """

    scope = "visualsearch"

    @property
    def cache(self) -> Any:
        return caches[visualsearch_settings.CACHE_ALIAS]

    def get_rate(self) -> str | None:
        return visualsearch_settings.API_THROTTLE_RATE

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        try:
            return super().parse_rate(rate)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            raise ImproperlyConfigured(
                f'VISUALSEARCH["API_THROTTLE_RATE"] = {rate!r} is not a rate such as '
                '"120/minute" (or None for no throttling).'
            ) from None

    def get_cache_key(self, request: Any, view: Any) -> str:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            ident = f"user-{user.pk}"
        else:
            ident = self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def get_ident(self, request: Any) -> str:
        """``REMOTE_ADDR``; DRF's own rule (``X-Forwarded-For``) only once ``NUM_PROXIES`` says
        how many proxies wrote it, as DRF without it trusts any client's header."""
        if api_settings.NUM_PROXIES is None:
            return request.META.get("REMOTE_ADDR") or ""
        return super().get_ident(request)

    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # the cache backend's own errors: Redis, memcached, database
            logger.warning("visualsearch API throttle skipped, the cache is unavailable: %s", exc)
            return True
