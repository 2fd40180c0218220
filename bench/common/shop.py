"""Django with the demo shop's settings, as the bench scripts run it.

``shop.settings`` takes its database from ``DATABASE_URL`` or else the embedded Postgres
(``VISUALSEARCH_PGDATA``, default ``.pgdata/``; database ``VISUALSEARCH_DB_NAME``), and the
encoder from ``VISUALSEARCH_ENCODER``: a variable set by the caller always wins over the
defaults given here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def use_shop_settings(database: str | None = None) -> None:
    """Default ``DJANGO_SETTINGS_MODULE`` to the demo shop's and the database name to
    ``database`` (when given), before Django reads its settings."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")  # shop.settings is off unless asked
    if database:
        os.environ.setdefault("VISUALSEARCH_DB_NAME", database)


def setup_django(
    database: str | None = None, visualsearch: Mapping[str, Any] | None = None
) -> None:
    """``django.setup()`` with the shop's settings; ``visualsearch`` overrides keys of the
    ``VISUALSEARCH`` setting, set before anything reads it."""
    use_shop_settings(database)
    import django
    from django.conf import settings

    if visualsearch:
        settings.VISUALSEARCH = {**settings.VISUALSEARCH, **visualsearch}
    django.setup()
