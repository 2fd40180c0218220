"""Cached renderings that stay correct: one generation number invalidates them all.

Every cache key built here carries the current generation. Anything that changes which
products are similar, or how a product looks in a widget (a vector written, a row gone stale
or failed, an image or a product saved or deleted), bumps the generation after its
transaction commits, so older entries are simply never read again and expire on their own.
A cache that cannot be reached (Redis down) means "no cache", never an error on the page.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import caches
from django.db import transaction

from visualsearch.conf import visualsearch_settings

logger = logging.getLogger(__name__)

GENERATION_KEY = "visualsearch:generation"


def _cache() -> Any:
    return caches[visualsearch_settings.CACHE_ALIAS]


def generation() -> int | None:
    """The current generation, created on first use; ``None`` when the cache is unreachable."""
    cache = _cache()
    try:
        value = cache.get(GENERATION_KEY)
        if value is None:
            # A fresh start value, so entries of an evicted generation never come back.
            cache.add(GENERATION_KEY, time.time_ns(), timeout=None)
            value = cache.get(GENERATION_KEY)
        return value
    except Exception as exc:  # redis-py and other backends raise their own types
        logger.warning("visualsearch: cache unavailable: %s", exc)
        return None


def bump() -> None:
    """Invalidate every cached rendering now."""
    cache = _cache()
    try:
        try:
            cache.incr(GENERATION_KEY)
        except ValueError:  # no generation yet (or evicted)
            cache.set(GENERATION_KEY, time.time_ns(), timeout=None)
    except Exception as exc:
        logger.warning("visualsearch: cache unavailable, could not invalidate: %s", exc)


def invalidate(using: str | None = None) -> None:
    """Invalidate cached renderings once the current transaction commits (now if none)."""
    transaction.on_commit(bump, using=using)


def lookup(key: str, current: int | None = None) -> Any:
    """The value cached under ``key`` in generation ``current`` (default: the generation now),
    else ``None``. A rendering reads the generation once and passes it to :func:`lookup` and
    :func:`store`, so that what it read before a change is never stored as newer."""
    current = generation() if current is None else current
    if current is None:
        return None
    try:
        return _cache().get(f"visualsearch:{current}:{key}")
    except Exception as exc:
        logger.warning("visualsearch: cache unavailable: %s", exc)
        return None


def store(key: str, value: Any, timeout: int, current: int | None = None) -> None:
    """Cache ``value`` under ``key`` in generation ``current`` (default: the generation now)
    for ``timeout`` seconds."""
    current = generation() if current is None else current
    if current is None or timeout <= 0:
        return
    try:
        _cache().set(f"visualsearch:{current}:{key}", value, timeout)
    except Exception as exc:
        logger.warning("visualsearch: cache unavailable: %s", exc)
