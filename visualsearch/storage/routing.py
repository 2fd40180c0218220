"""Read replicas: vector reads on a standby, writes and read-your-writes on the primary.

``ReplicaRouter`` is a Django database router (``DATABASE_ROUTERS``). It sends the reads of
the models that hold vectors (the image model, the product-text model and visualsearch's own
tables) to one of the ``READ_DATABASES`` aliases and every write to the primary
(``default``). Every query of the k-NN path picks its connection through ``model.objects.db``
or ``queryset.db``, so the router decides for all of them. Reads stay on the primary:

- while the context is pinned: for ``PIN_PRIMARY_SECONDS`` after it wrote one of those
  tables (noticed on the primary connection itself, so raw SQL counts too), for the whole
  request while the pinning cookie of :mod:`visualsearch.web.pinning` is valid, and inside
  :func:`use_primary`;
- inside a Celery task (a task re-reads the rows it is about to write), and inside a
  transaction on the primary, except the per-request one of ``ATOMIC_REQUESTS``;
- when no replica is up and within ``REPLICA_MAX_LAG_SECONDS`` of the primary. Each replica
  is checked at most every ``REPLICA_CHECK_SECONDS`` per process: the standby's replay
  position against the WAL positions the primary had flushed at earlier checks
  (:func:`check_replica`).

With ``READ_DATABASES`` empty the router has no opinion on anything (behaviour unchanged).
"""

from __future__ import annotations

import random
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    router,
)

from visualsearch.conf import visualsearch_settings

PRIMARY = DEFAULT_DB_ALIAS

#: ``time.monotonic()`` until which this context reads from the primary (it wrote).
_pinned_until: ContextVar[float] = ContextVar("visualsearch_pinned_until", default=0.0)
#: Nesting depth of :func:`use_primary` (and of a request carrying the pinning cookie).
_forced: ContextVar[int] = ContextVar("visualsearch_use_primary", default=0)


@dataclass(frozen=True)
class ReplicaState:
    """One health check of a read database: reachable, and how far behind (seconds)."""

    alias: str
    up: bool
    lag: float | None  # None: unknown (down)
    checked_at: float
    error: str = ""

    @property
    def usable(self) -> bool:
        """Up and within ``REPLICA_MAX_LAG_SECONDS`` of the primary."""
        return self.up and self.lag is not None and self.lag <= _config().max_lag


_states: dict[str, ReplicaState] = {}
_states_lock = threading.Lock()


@dataclass(frozen=True)
class _Config:
    """The settings the router reads on every query, read once per settings change."""

    replicas: tuple[str, ...]
    labels: frozenset[str]  # lower-case labels of the image and product-text models
    max_lag: float
    check_seconds: float


_current: list[_Config] = []


def _config() -> _Config:
    if _current:
        return _current[0]
    aliases = tuple(visualsearch_settings.READ_DATABASES or ())
    for alias in aliases:
        if alias not in connections.settings:
            raise ImproperlyConfigured(
                f"VISUALSEARCH['READ_DATABASES'] names {alias!r}, which is not in DATABASES."
            )
    names = (visualsearch_settings.IMAGE_MODEL, visualsearch_settings.TEXT_MODEL)
    config = _Config(
        replicas=aliases,
        labels=frozenset(name.lower() for name in names if isinstance(name, str)),
        max_lag=float(visualsearch_settings.REPLICA_MAX_LAG_SECONDS),
        check_seconds=float(visualsearch_settings.REPLICA_CHECK_SECONDS),
    )
    _current[:] = [config]
    return config


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in ("VISUALSEARCH", "DATABASES"):
        _current.clear()


setting_changed.connect(_settings_changed, dispatch_uid="visualsearch.storage.routing.settings")


class ReplicaRouter:
    """Vector reads to ``READ_DATABASES``, writes to the primary (see the module's text)."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        if not replicas() or not reads_from_replica(model):
            return None
        return read_database()

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        if not replicas():
            return None
        watch_writes(PRIMARY)
        return PRIMARY if reads_from_replica(model) else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        aliases = {PRIMARY, *replicas()}
        if len(aliases) > 1 and {obj1._state.db, obj2._state.db} <= aliases:
            return True  # the same data, a replica's copy of it
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if db != PRIMARY and db in replicas():
            return False  # a standby gets its schema from the primary
        return None


def replicas() -> tuple[str, ...]:
    """The configured ``READ_DATABASES`` aliases (``ImproperlyConfigured`` for one that is
    not in ``DATABASES``)."""
    return _config().replicas


def reads_from_replica(model: type) -> bool:
    """Whether the router sends reads of ``model`` to a read database: visualsearch's own
    models, the image model and the product-text model (the tables of the vector queries)."""
    meta = model._meta
    return meta.app_label == "visualsearch" or meta.label_lower in _config().labels


def read_database() -> str:
    """The alias a vector read goes to now: the primary while pinned, else one of the usable
    ``READ_DATABASES`` at random (the primary too when it is listed), else the primary."""
    if primary_pinned():
        return PRIMARY
    usable = [alias for alias in replicas() if alias == PRIMARY or replica_state(alias).usable]
    if not usable:
        return PRIMARY
    alias = random.choice(usable)
    if alias != PRIMARY:
        watch_failures(alias)
    return alias


def primary_pinned() -> bool:
    """Whether reads in this context must see the primary (pinned, a task, a transaction)."""
    if _forced.get() or _pinned_until.get() > time.monotonic():
        return True
    if _in_celery_task():
        return True
    primary = connections[PRIMARY]
    return primary.in_atomic_block and not primary.settings_dict.get("ATOMIC_REQUESTS")


def _in_celery_task() -> bool:
    state = sys.modules.get("celery._state")  # never imports Celery itself
    return state is not None and state.get_current_task() is not None


def pin_primary(seconds: float | None = None) -> None:
    """Read from the primary in this context (thread, request) for ``seconds``
    (``PIN_PRIMARY_SECONDS``): called when it writes a table the replicas serve."""
    if seconds is None:
        seconds = float(visualsearch_settings.PIN_PRIMARY_SECONDS)
    _pinned_until.set(max(_pinned_until.get(), time.monotonic() + seconds))


def write_alias(queryset: Any) -> str:
    """The alias ``queryset.update()`` / ``delete()`` write to (its ``using()``, else the
    router's write database): where the ``on_commit`` hooks of those writes belong, not
    ``queryset.db``, which is a read database once replicas serve the model."""
    return queryset._db or router.db_for_write(queryset.model, **queryset._hints)


@contextmanager
def use_primary() -> Iterator[None]:
    """Every read inside the block goes to the primary (scripts that read, then write)."""
    token = _forced.set(_forced.get() + 1)
    try:
        yield
    finally:
        _forced.reset(token)


@contextmanager
def request_scope(*, pinned: bool = False) -> Iterator[Any]:
    """A fresh pinning state for one request; ``pinned``: the client wrote a moment ago.

    Yields a callable that says whether the request wrote a table the replicas serve (then
    the pinning middleware sets its cookie).
    """
    until = _pinned_until.set(0.0)
    forced = _forced.set(1 if pinned else 0)
    try:
        yield lambda: _pinned_until.get() > 0.0
    finally:
        _forced.reset(forced)
        _pinned_until.reset(until)


# -- noticing writes ------------------------------------------------------------------------

_WRITE = re.compile(
    r"\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|MERGE\s+INTO)\s+(?:ONLY\s+)?\"?(\w+)", re.I
)


def watch_writes(alias: str) -> None:
    """Pin the context when ``alias``'s connection writes a table the replicas serve.

    An execute wrapper, put first on the connection once (so that ``execute_wrapper``
    blocks of others, which pop the last one, keep theirs). It sees every statement, raw
    SQL included, and reads only the statement's first words.
    """
    connection = connections[alias]
    if getattr(connection, "_visualsearch_watched", False):
        return
    connection.execute_wrappers.insert(0, _notice_writes)
    connection._visualsearch_watched = True


def _notice_writes(execute: Any, sql: str, params: Any, many: bool, context: dict) -> Any:
    result = execute(sql, params, many, context)
    match = _WRITE.match(sql) if isinstance(sql, str) else None
    if match and replicas() and match.group(1) in _replicated_tables():
        pin_primary()
    return result


def _replicated_tables() -> frozenset[str]:
    return _tables_for(_config().labels)


@lru_cache(maxsize=8)
def _tables_for(labels: frozenset[str]) -> frozenset[str]:
    from django.apps import apps

    return frozenset(
        model._meta.db_table
        for model in apps.get_models(include_auto_created=True)
        if model._meta.app_label == "visualsearch" or model._meta.label_lower in labels
    )


def watch_failures(alias: str) -> None:
    """Leave ``alias`` out at once when a statement on it fails for want of the server
    (``OperationalError``, ``InterfaceError``): the statement still fails, the next ones go
    elsewhere until a check finds the replica well again."""
    connection = connections[alias]
    if not getattr(connection, "_visualsearch_failures_watched", False):
        connection.execute_wrappers.insert(0, _notice_failures)
        connection._visualsearch_failures_watched = True


def _notice_failures(execute: Any, sql: str, params: Any, many: bool, context: dict) -> Any:
    try:
        return execute(sql, params, many, context)
    except (OperationalError, InterfaceError) as exc:
        alias = context["connection"].alias
        down = ReplicaState(alias, up=False, lag=None, checked_at=time.monotonic(), error=str(exc))
        with _states_lock:
            _states[alias] = down
        raise


# -- health and lag -------------------------------------------------------------------------


def replica_state(alias: str, *, fresh: bool = False) -> ReplicaState:
    """``alias``'s health, checked at most every ``REPLICA_CHECK_SECONDS`` per process."""
    state = _states.get(alias)  # a dict read is atomic: no lock on the way of every query
    if state is None or fresh or time.monotonic() - state.checked_at >= _config().check_seconds:
        state = check_replica(alias)
        with _states_lock:
            _states[alias] = state
    return state


def forget_states() -> None:
    """Drop the cached health checks (tests; after a fail-over)."""
    with _states_lock:
        _states.clear()
        _noted.clear()


def check_replica(alias: str) -> ReplicaState:
    """Check ``alias`` now: reachable, and its lag behind the primary in seconds.

    Each check notes the primary's WAL flush position; the lag is how long ago the oldest
    noted position that the standby has not replayed yet was noted (0 when it has replayed
    them all). So an idle primary never makes a standby look behind (the age of its last
    replayed transaction would), and a standby that stopped replaying is seen as behind by
    the time between two checks at most. A server that is not in recovery (not a physical
    standby) counts as caught up.
    """
    now = time.monotonic()
    try:
        with connections[PRIMARY].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_flush_lsn()::text")
            primary_lsn = _lsn(cursor.fetchone()[0])
    except DatabaseError:  # the primary is away: judge the replica by what was noted before
        primary_lsn = None
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text")
            recovering, replayed = cursor.fetchone()
    except DatabaseError as exc:
        _close_quietly(alias)
        with _states_lock:
            _noted.pop(alias, None)
        return ReplicaState(alias, up=False, lag=None, checked_at=now, error=str(exc).strip())
    if not recovering:
        return ReplicaState(alias, up=True, lag=0.0, checked_at=now)
    replayed_lsn = _lsn(replayed) if replayed else -1
    with _states_lock:
        noted = [(at, lsn) for at, lsn in _noted.get(alias, []) if lsn > replayed_lsn]
        if primary_lsn is not None and primary_lsn > replayed_lsn:
            if not noted or noted[-1][1] < primary_lsn:
                noted = [*noted, (now, primary_lsn)][-NOTED:]
        _noted[alias] = noted
    lag = now - noted[0][0] if noted else 0.0
    return ReplicaState(alias, up=True, lag=lag, checked_at=now)


#: Primary WAL positions noted per replica, ``[(time.monotonic(), lsn), ...]``, oldest first.
_noted: dict[str, list[tuple[float, int]]] = {}
NOTED = 64


def _lsn(text: str) -> int:
    """A ``pg_lsn`` in its text form (``16/B374D848``) as an integer."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def _close_quietly(alias: str) -> None:
    """Drop a broken connection, so that the next check connects afresh."""
    try:
        connections[alias].close()
    except DatabaseError:
        pass
