"""What an encoder switch's cut-over costs: the one ``UPDATE … FROM`` that copies the new
vectors into the serving column, with the HNSW index kept up to date row by row, against the
same ``UPDATE`` without the index and a fresh index build.

    .venv/bin/python bench/cutover_probe.py [--rows 6573] [--dimensions 1280]

Random unit vectors in a scratch database (``bench_cutover``) on the embedded Postgres, the
column ``PLAIN`` as visualsearch stores it, HNSW ``m=16, ef_construction=64`` (the defaults).
Writes ``bench/results/cutover-probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

DATABASE = "bench_cutover"


def vectors_text(rng: np.random.Generator, rows: int, dimensions: int) -> list[str]:
    values = rng.standard_normal((rows, dimensions)).astype(np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    return ["[" + ",".join(f"{x:.6f}" for x in row) + "]" for row in values]


def load(connection, rows: int, dimensions: int) -> None:
    """The serving table ``t`` and the built vectors ``v`` (content-addressed), filled."""
    rng = np.random.default_rng(0)
    connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
    connection.execute(
        f"CREATE TABLE t (id int PRIMARY KEY, e vector({dimensions}), m text, h text)"
    )
    connection.execute("ALTER TABLE t ALTER COLUMN e SET STORAGE PLAIN")
    connection.execute(
        "CREATE TABLE v (model text, digest text, vector vector, PRIMARY KEY (model, digest))"
    )
    with connection.cursor() as cursor:
        with cursor.copy("COPY t (id, e, m, h) FROM STDIN") as copy:
            for i, text in enumerate(vectors_text(rng, rows, dimensions)):
                copy.write_row((i, text, "a", f"h{i}"))
        with cursor.copy("COPY v (model, digest, vector) FROM STDIN") as copy:
            for i, text in enumerate(vectors_text(rng, rows, dimensions)):
                copy.write_row(("b", f"h{i}", text))
    connection.execute("CREATE INDEX t_m ON t (m)")


def timed(connection, statement: str) -> float:
    clock = time.perf_counter()
    connection.execute(statement)
    return round(time.perf_counter() - clock, 2)


def measure(connection) -> dict[str, float]:
    hnsw = (
        "CREATE INDEX t_hnsw ON t USING hnsw (e vector_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )
    copy = "UPDATE t SET e = v.vector, m = v.model FROM v WHERE v.model = 'b' AND v.digest = t.h"
    result = {"index_build_s": timed(connection, hnsw)}
    connection.execute("VACUUM ANALYZE t")
    result["update_with_hnsw_s"] = timed(connection, copy)
    connection.execute("DROP INDEX t_hnsw")
    connection.execute("UPDATE t SET m = 'a'")
    result["update_without_hnsw_s"] = timed(connection, copy)
    result["index_rebuild_s"] = timed(connection, hnsw)
    return result


def main() -> None:
    import psycopg

    from bench.common import BASE_DIR as ROOT
    from visualsearch.contrib.embedded_postgres import embedded_database_url

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6573)
    parser.add_argument("--dimensions", type=int, default=1280)
    parser.add_argument("--output", type=Path, default=ROOT / "bench/results/cutover-probe.json")
    args = parser.parse_args()
    admin = embedded_database_url(ROOT / ".pgdata", "postgres")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    url = embedded_database_url(ROOT / ".pgdata", DATABASE)
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            load(connection, args.rows, args.dimensions)
            result = {"rows": args.rows, "dimensions": args.dimensions, **measure(connection)}
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
    print(json.dumps(result))
    args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
