"""Peak memory of ``manage.py import_catalog`` on the first N photos of the dev catalog.

    .venv/bin/python bench/import_memory.py --rows 1000 --rows 6573
    .venv/bin/python bench/import_memory.py --rows 1000 --manage /tmp/old/manage.py --output -

For each ``--rows N``: the database ``vs_import_memory`` on the embedded Postgres is dropped,
created again and migrated (``manage.py migrate``, a process of its own), then
``manage.py import_catalog products.csv --limit N --defer-embedding --no-progress`` runs in a
child process whose peak resident memory (``ru_maxrss`` from ``os.wait4``) is the figure, in
MB. Embedding stays off: ``--defer-embedding`` leaves the images pending and enqueues nothing,
so neither Celery nor an encoder is involved. The child runs with ``DJANGO_DEBUG=0`` (Django's
query log would otherwise grow with the rows) and a throw-away ``MEDIA_ROOT``.

``--manage`` runs another checkout's command (e.g. ``git archive HEAD | tar -x -C /tmp/old``)
against the same server and catalog. Prints ``{"N": MB, ...}`` and writes that dict to
``bench/results/import-memory.json`` (``--output``; ``-`` writes nothing). ``DATABASE_URL`` is
ignored: the database dropped is always the embedded server's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402
from bench.common.results import RESULTS_DIR, shown, write_json  # noqa: E402

DATABASE = "vs_import_memory"
OUTPUT = RESULTS_DIR / "import-memory.json"


def pgdata() -> Path:
    """The embedded server's data folder, as ``shop.settings`` finds it."""
    return Path(os.environ.get("VISUALSEARCH_PGDATA", BASE_DIR / ".pgdata")).resolve()


def drop_database(database: str) -> None:
    """Drop ``database`` on the embedded server (started if need be), connections and all."""
    import psycopg

    from visualsearch.contrib.embedded_postgres import embedded_database_url

    with psycopg.connect(embedded_database_url(pgdata(), "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def child_env(database: str, media: Path) -> dict[str, str]:
    """The environment of the shop's ``manage.py`` for one measurement."""
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(
        DJANGO_SETTINGS_MODULE="shop.settings",
        VISUALSEARCH_PGDATA=str(pgdata()),
        VISUALSEARCH_DB_NAME=database,
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="bench-import-memory",
        MEDIA_ROOT=str(media),
    )
    return env


def run_measured(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run ``command``; its peak RSS in MB and its stdout. ``RuntimeError`` if it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource use
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{stderr}")
    return usage.ru_maxrss / 1024, stdout  # kilobytes on Linux


def measure(
    rows: int,
    *,
    data: Path = DATA_DIR,
    manage: Path = BASE_DIR / "manage.py",
    database: str = DATABASE,
) -> float:
    """Peak RSS (MB) of a process importing the first ``rows`` products of ``data`` into a
    fresh, migrated database, embedding deferred."""
    drop_database(database)
    with tempfile.TemporaryDirectory(prefix="import-memory-") as media:
        env, cwd = child_env(database, Path(media)), manage.resolve().parent
        python = [sys.executable, str(manage.resolve())]
        subprocess.run([*python, "migrate", "--noinput", "-v0"], env=env, cwd=cwd, check=True)
        command = [*python, "import_catalog", str((data / "products.csv").resolve())]
        command += ["--limit", str(rows), "--defer-embedding", "--no-progress"]
        peak, stdout = run_measured(command, env, cwd)
    print(f"{rows} rows: {peak:.1f} MB; {stdout.strip()}", file=sys.stderr)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="repeatable (1000)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="products.csv + images/")
    parser.add_argument("--manage", type=Path, default=BASE_DIR / "manage.py")
    parser.add_argument("--output", default=str(OUTPUT), help="JSON file, or - for none")
    args = parser.parse_args()
    if not (args.data / "products.csv").exists():
        parser.error(f"no catalog at {args.data}")
    results = {
        str(rows): round(measure(rows, data=args.data, manage=args.manage), 1)
        for rows in args.rows or [1000]
    }
    drop_database(DATABASE)
    print(json.dumps(results))
    if args.output != "-":
        path = write_json(args.output, results, announce=False)
        print(f"wrote {shown(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
