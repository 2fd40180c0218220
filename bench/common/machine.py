"""Facts about the machine and the database that every report carries."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine() -> dict[str, Any]:
    """CPUs, platform and Python version."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded to 0.01."""
    return [round(value, 2) for value in os.getloadavg()]


def memory_gb() -> float:
    """Physical memory in GiB."""
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def postgres() -> dict[str, Any]:
    """Postgres and pgvector versions and ``shared_buffers`` of Django's default database."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT version(), extversion FROM pg_extension WHERE extname = 'vector'")
        version, pgvector = cursor.fetchone()
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
    return {
        "postgres": version.split(",")[0],
        "pgvector": pgvector,
        "shared_buffers": shared_buffers,
    }
