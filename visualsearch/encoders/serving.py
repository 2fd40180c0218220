"""The image encoder whose vectors serve queries.

Normally the configured one (``get_encoder()``). While a new encoder generation is being
built (:mod:`visualsearch.ingest.switch`), the previous generation keeps serving: its encoder
is rebuilt from the class and frozen options recorded in ``visualsearch_encodergeneration``,
so query photos are encoded into the space of the vectors they are compared with.

Each process re-reads which generation serves at most every ``TTL`` seconds; a query that
comes back empty asks again at once (:func:`retry_after_switch`), so a cut-over never shows
shoppers an empty list while a process still holds the old answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections, transaction
from django.utils.module_loading import import_string

from visualsearch.encoders import BaseEncoder, get_encoder

logger = logging.getLogger(__name__)

#: Seconds a process trusts its reading of the serving generation.
TTL = 5.0
TABLE = "visualsearch_encodergeneration"

_readings: dict[str, tuple[float, tuple | None]] = {}
_lock = threading.Lock()
T = TypeVar("T")


def serving_encoder(using: str = DEFAULT_DB_ALIAS) -> BaseEncoder:
    """The encoder of the serving generation (the configured one unless a switch is on)."""
    configured = get_encoder()
    row = _serving(using)
    if row is None:
        return configured
    model_id, path, options, _building = row
    if model_id == _model_id(configured):
        return configured
    try:
        return _build(path, json.dumps(options, sort_keys=True))
    except Exception:  # a generation that cannot be rebuilt here: serve the configured one
        logger.exception("visualsearch: cannot rebuild the serving encoder %s", model_id)
        return configured


def serving_model_id(using: str = DEFAULT_DB_ALIAS) -> str:
    """``model_id`` of the serving generation's vectors."""
    return _model_id(serving_encoder(using))


def ready_models(using: str = DEFAULT_DB_ALIAS) -> tuple[str, ...]:
    """Model ids whose ready vectors queries read: the serving one, and during a switch the
    building one too. At any moment the serving column holds one of them only (the cut-over
    copies every vector in one transaction), so a process that has not seen a cut-over yet
    still finds the new vectors instead of none."""
    serving_id = serving_model_id(using)
    row = _serving(using)
    building = row[3] if row is not None else None
    return (serving_id, building) if building and building != serving_id else (serving_id,)


def switching(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether this process's reading says a switch is building."""
    row = _serving(using)
    return row is not None and bool(row[3])


def recorded(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether a serving generation is recorded (this process's reading)."""
    return _serving(using) is not None


def refresh(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Read the serving generation again now; True when it changed since the last reading."""
    with _lock:
        before = _readings.get(using, (0.0, None))[1]
    return _serving(using, fresh=True) != before


def retry_after_switch(query: Callable[[], T], using: str = DEFAULT_DB_ALIAS) -> T:
    """``query()``, run once more when it finds nothing because a cut-over happened since
    this process last looked (the old generation's vectors are gone)."""
    result = query()
    if not result and refresh(using):
        return query()
    return result


def forget() -> None:
    """Drop every process-level reading (after a cut-over in this process, and in tests)."""
    with _lock:
        _readings.clear()
    _build.cache_clear()


def _serving(using: str, fresh: bool = False) -> tuple | None:
    now = time.monotonic()
    with _lock:
        reading = _readings.get(using)
    if reading is not None and not fresh and now - reading[0] < TTL:
        return reading[1]
    row = _read(using)
    with _lock:
        _readings[using] = (now, row)
    return row


def _read(using: str) -> tuple | None:
    """``(model_id, encoder path, options, building model_id or None)`` of the serving
    generation, or None (none recorded yet, or the table is not migrated yet)."""
    connection = connections[using]
    try:
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(f"SELECT to_regclass('{TABLE}') IS NOT NULL")
            if not cursor.fetchone()[0]:
                return None
            cursor.execute(
                f"SELECT state, model_id, encoder, options FROM {TABLE} "
                "WHERE state IN ('serving', 'building')"
            )
            rows = {row[0]: row[1:] for row in cursor.fetchall()}
    except DatabaseError:  # the database is away: queries will say so themselves
        return None
    if "serving" not in rows:
        return None
    model_id, path, options = rows["serving"]
    options = json.loads(options) if isinstance(options, str) else options
    return model_id, path, options, rows.get("building", (None,))[0]


@lru_cache(maxsize=4)
def _build(path: str, options: str) -> BaseEncoder:
    return import_string(path)(**json.loads(options))


def _model_id(encoder: Any) -> str:
    return encoder.model_id


def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == "VISUALSEARCH":
        forget()


setting_changed.connect(_reset, dispatch_uid="visualsearch.encoders.serving.reset")
