"""Model lifecycle without outage: encoder switches and a retrain under a steady query load,
the same retrain on the code before issue 18, and the catalog import's peak memory.

    .venv/bin/python bench/lifecycle.py                   # 6,573 photos: ~35 min on 2 cores
    .venv/bin/python bench/lifecycle.py --rows 300 --output /tmp/lifecycle/lifecycle.json

New code (this checkout), database ``bench_lifecycle`` on the embedded Postgres:

1. the catalog imported as ``make demo`` does (``import_catalog --defer-embedding``, then
   ``visualsearch_reindex`` inline) with the frozen EfficientNet-Lite0, and two projections
   trained on it by ``visualsearch_adapt --label category --epochs 5 --reindex none`` (seeds
   0 and 2; the import fills ``category`` from the CSV's articleType);
2. the query load (:mod:`bench.lifecycle_load`, a process of its own, 20 queries/s) starts,
   configured with the adapted encoder (seed 0's projection) as a redeployed web process is;
   then, each timed from its command's start until the new generation serves
   (``EncoderGeneration.serving_since``), the database sampled meanwhile, and followed by
   ``--settle`` seconds of load:

   a. ``switch-frozen``: every ``EncodedVector`` deleted, ``visualsearch_switch --inline``.
      The serving vectors are the base encoder's: the switch derives all from them
      (``switch._base_vectors``) and encodes no photo;
   b. ``switch-reencode``, the worst case and ``switch_seconds``: seed 2's projection written
      over the configured file, every ``EncodedVector`` deleted again, ``visualsearch_switch
      --inline``: no base feature is left and the serving vectors are adapted, so every
      photo is decoded and encoded again while the previous projection serves;
   c. ``retrain``: ``visualsearch_adapt --reindex inline`` (seed 1): it reads the stored base
      features, trains and derives.

3. the old code (``--old``, a checkout of the commit before issue 18), database
   ``bench_lifecycle_old``: the same import and reindex, ``visualsearch_adapt`` (seed 0) and
   ``visualsearch_reindex`` with it configured, then the same retrain under the same load,
   timed as the command's wall time (it encodes every photo to train and again to re-embed;
   its empty results are counted apart);
4. ``bench.import_memory.measure`` at 1,000 rows and at all of them.

Every process has the same environment (the shop's settings, DEBUG off, a private Redis as
broker and cache, media and projections under ``.cache/bench-lifecycle/``); both databases are
dropped first and after (``--keep`` keeps them); ``DATABASE_URL`` is ignored. Writes
``bench/results/lifecycle.json`` (``--output``) and the details beside it (``-runs.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.common import DATA_DIR  # noqa: E402  (after the sys.path fix)
from bench.common.machine import load_average, machine  # noqa: E402
from bench.common.processes import stop  # noqa: E402
from bench.common.results import RESULTS_DIR, plain_args, write_json  # noqa: E402
from bench.common.tables import dict_table  # noqa: E402
from bench.lifecycle_load import counts, milestones, tally, watch  # noqa: E402

DATABASE, OLD_DATABASE = "bench_lifecycle", "bench_lifecycle_old"
PGDATA = Path(os.environ.get("VISUALSEARCH_PGDATA", BASE_DIR / ".pgdata")).resolve()
WORK = BASE_DIR / ".cache" / "bench-lifecycle"
TRAIN = ["--label", "category", "--epochs", "5", "--no-progress"]
GENERATIONS = (
    "SELECT model_id, state, created_at, serving_since FROM visualsearch_encodergeneration "
    "ORDER BY created_at"
)
EMBEDDED = (
    "SELECT embedding_model || ' ' || embedding_status, count(*) FROM catalog_productimage "
    "GROUP BY 1"
)
DELETE_FEATURES = (
    "from visualsearch.models import EncodedVector; print(EncodedVector.objects.all().delete())"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, help="first N catalog rows (default: all)")
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="products.csv + images/")
    parser.add_argument("--old", type=Path, default=Path("/tmp/old"), help="checkout before #18")
    parser.add_argument("--rate", type=float, default=20.0, help="load, queries per second")
    parser.add_argument("--settle", type=float, default=6.0, help="load seconds after each")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "lifecycle.json")
    parser.add_argument("--skip-old", action="store_true", help="no old-code retrain")
    parser.add_argument("--skip-memory", action="store_true", help="no import memory")
    parser.add_argument("--keep", action="store_true", help="keep the databases and media")
    args = parser.parse_args()
    with open(args.data / "products.csv") as handle:
        total = sum(1 for _ in handle) - 1
    args.rows = min(args.rows or total, total)
    if not args.skip_old and not (args.old / "manage.py").exists():
        parser.error(f"no checkout at {args.old} (git archive 23df519 | tar -x -C /tmp/old)")
    return args


def url(database: str) -> str:
    """A URL of ``database`` on the embedded server (created if missing)."""
    from visualsearch.contrib.embedded_postgres import embedded_database_url

    return embedded_database_url(PGDATA, database)


def sql(database: str, statement: str, params: tuple = ()) -> list:
    """Run ``statement`` on ``database`` of the embedded server."""
    import psycopg

    with psycopg.connect(url(database), autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def drop(database: str) -> None:
    sql("postgres", f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@dataclass
class Site:
    """A checkout run on a database of its own, with its media and projection files."""

    name: str
    root: Path
    database: str
    broker: str
    log: list = field(default_factory=list)

    @property
    def work(self) -> Path:
        return WORK / self.name

    @property
    def projection(self) -> Path:
        """The file the adapted encoder is configured with."""
        return self.work / "projection.npz"

    def env(self, encoder: str) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
        env.update(
            DJANGO_SETTINGS_MODULE="shop.settings", DJANGO_DEBUG="0",
            DJANGO_SECRET_KEY="bench-lifecycle", PYTHONUNBUFFERED="1",
            VISUALSEARCH_PGDATA=str(PGDATA), VISUALSEARCH_DB_NAME=self.database,
            VISUALSEARCH_ENCODER=encoder, VISUALSEARCH_PROJECTION=str(self.projection),
            VISUALSEARCH_CACHE_DIR=str(BASE_DIR / ".cache" / "visualsearch"),
            MEDIA_ROOT=str(self.work / "media"), CELERY_BROKER_URL=self.broker,
            REDIS_URL=self.broker, CACHE_URL=self.broker[:-1] + "1",
        )  # fmt: skip
        return env

    def manage(self, *args: str, encoder: str = "efficientnet") -> dict[str, Any]:
        """Run ``manage.py args`` here; its start, wall time and last lines of output."""
        started, clock = time.time(), time.perf_counter()
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=self.root, env=self.env(encoder),
            capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - clock
        command = " ".join(["manage.py", *args])
        if done.returncode:
            raise RuntimeError(f"{command} exited {done.returncode}:\n{done.stderr[-4000:]}")
        entry = {"command": command, "encoder": encoder, "started": started}
        entry |= {"seconds": round(seconds, 2), "output": done.stdout.strip().splitlines()[-10:]}
        self.log.append(entry)
        print(f"[{self.name}] {command} ({encoder}): {seconds:.1f} s", flush=True)
        return entry

    def watched(self, phase: dict, *args: str) -> dict[str, Any]:
        """:meth:`manage` (adapted encoder) with the database sampled meanwhile (``phase``'s
        ``timeline``, :func:`bench.lifecycle_load.watch`)."""
        with watch(url(self.database), kept=self.name == "new") as phase["timeline"]:
            return self.manage(*args, encoder="adapted")

    def generations(self) -> list:
        """``[model_id, state, created_at, serving_since]`` of every generation (epoch s)."""
        rows = sql(self.database, GENERATIONS)
        return [[m, s, c.timestamp(), v and v.timestamp()] for m, s, c, v in rows]

    def embedded_models(self) -> dict[str, int]:
        """``{"<embedding_model> <status>": images}`` of the serving column."""
        return dict(sql(self.database, EMBEDDED))


def prepare(site: Site, args: argparse.Namespace) -> None:
    """A fresh database and media folder, the catalog imported and embedded (frozen encoder)."""
    drop(site.database)
    shutil.rmtree(site.work, ignore_errors=True)
    site.work.mkdir(parents=True)
    site.manage("migrate", "--noinput", "-v0")
    csv_path = str((args.data / "products.csv").resolve())
    site.manage(
        "import_catalog", csv_path, "--defer-embedding", "--no-progress", "--limit", str(args.rows)
    )
    site.manage("visualsearch_reindex", "--no-progress")


def place(source: Path, target: Path) -> None:
    """Write ``source`` over ``target`` atomically, as ``visualsearch_adapt`` writes it."""
    temporary = target.with_suffix(".tmp")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


@contextlib.contextmanager
def query_load(site: Site, args: argparse.Namespace, into: dict) -> Iterator[float]:
    """The load process against ``site`` (configured with the adapted encoder); yields when it
    is ready, and fills ``into`` with its report once stopped."""
    out = site.work / "load.json"
    command = [sys.executable, str(BASE_DIR / "bench" / "lifecycle_load.py"), "--out", str(out)]
    command += ["--rows", str(args.rows), "--rate", str(args.rate), "--data", str(args.data)]
    with open(site.work / "load.log", "w") as log:
        process = subprocess.Popen(
            command, cwd=site.root, env=site.env("adapted"), stdout=subprocess.PIPE,
            stderr=log, text=True,
        )  # fmt: skip
    try:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the query load did not start: see {site.work / 'load.log'}")
        yield time.time()
    finally:
        stop(process, timeout=120)
    into.update(json.loads(out.read_text()))
    into["stopped"] = time.time()


def switch_phase(site: Site, name: str, args: argparse.Namespace, projection: Path | None) -> dict:
    """Optionally a new projection configured, stored features deleted, the switch built in
    a process of its own; timed until the new generation serves."""
    phase: dict[str, Any] = {"phase": name, "start": time.time()}
    if projection is not None:
        place(projection, site.projection)
        phase["configured"] = projection.name
    phase["deleted"] = site.manage("shell", "-c", DELETE_FEATURES, encoder="adapted")["output"]
    command = site.watched(phase, "visualsearch_switch", "--inline")
    return finish(site, phase, command, args)


def finish(site: Site, phase: dict, command: dict, args: argparse.Namespace) -> dict:
    """``phase`` with its command, what serves now and since when; then ``--settle``."""
    serving = [g for g in site.generations() if g[1] == "serving"]
    phase["command"], phase["generations"] = command, site.generations()
    if serving and serving[0][3] and serving[0][3] >= command["started"]:
        phase["serving_model"] = serving[0][0]
        phase["serving_s"] = round(serving[0][3] - command["started"], 2)
        phase["recorded_s"] = round(serving[0][2] - command["started"], 2)  # sync()
        phase["milestones"] = milestones(phase["timeline"], command["started"], serving[0][0])
        built = phase["milestones"]["built_s"] or 0  # sampled every 0.5 s: may come late
        phase["cut_over_s"] = round(max(0.0, phase["serving_s"] - built), 1)
    else:
        phase["serving_s"] = None  # the command ended and nothing new serves
        print(f"[{site.name}] {phase['phase']}: no new generation serves", flush=True)
    phase["embedded"] = site.embedded_models()
    time.sleep(args.settle)
    return phase


def new_code(args: argparse.Namespace, broker: str) -> dict:
    """Steps 1 and 2 of the module docstring on this checkout."""
    site = Site("new", BASE_DIR, DATABASE, broker)
    prepare(site, args)
    seeds = {seed: site.work / f"projection-seed{seed}.npz" for seed in (0, 2)}
    for seed, path in seeds.items():
        train = ["--out", str(path), *TRAIN, "--seed", str(seed), "--reindex", "none"]
        site.manage("visualsearch_adapt", *train)
    place(seeds[0], site.projection)  # the deployed configuration
    load: dict[str, Any] = {}
    with query_load(site, args, load) as ready:
        phases = [{"phase": "baseline", "start": ready}]
        time.sleep(args.settle)
        phases.append(switch_phase(site, "switch-frozen", args, None))
        phases.append(switch_phase(site, "switch-reencode", args, seeds[2]))
        phase = {"phase": "retrain", "start": time.time()}
        retrain = ["--out", str(site.projection), *TRAIN, "--seed", "1", "--reindex", "inline"]
        command = site.watched(phase, "visualsearch_adapt", *retrain)
        phases.append(finish(site, phase, command, args))
    tally(load, phases)
    return {"commands": site.log, "phases": phases, "load": counts(load["records"], load)}


def old_code(args: argparse.Namespace, broker: str) -> dict:
    """Step 3: the catalog served by the adapted encoder on the old code, then a retrain."""
    site = Site("old", args.old.resolve(), OLD_DATABASE, broker)
    prepare(site, args)
    first = ["--out", str(site.projection), *TRAIN, "--seed", "0", "--reindex", "none"]
    site.manage("visualsearch_adapt", *first)
    site.manage("visualsearch_reindex", "--no-progress", encoder="adapted")
    load: dict[str, Any] = {}
    with query_load(site, args, load) as ready:
        phases = [{"phase": "baseline", "start": ready}]
        time.sleep(args.settle)
        phase = {"phase": "retrain", "start": time.time()}
        retrain = ["--out", str(site.projection), *TRAIN, "--seed", "1", "--reindex", "inline"]
        phase["command"] = site.watched(phase, "visualsearch_adapt", *retrain)
        phase["milestones"] = milestones(phase["timeline"], phase["command"]["started"], None)
        phase["embedded"] = site.embedded_models()
        phases.append(phase)
        time.sleep(args.settle)
    if not load["visualsearch"].startswith(str(site.root)):
        raise RuntimeError(f"the old load imported {load['visualsearch']}")
    tally(load, phases)
    return {"commands": site.log, "phases": phases, "load": counts(load["records"], load)}


def import_memory(args: argparse.Namespace) -> dict[str, float]:
    """``bench.import_memory.measure`` at 1,000 rows (fewer on a subset) and at all rows."""
    from bench.import_memory import DATABASE as MEMORY_DATABASE
    from bench.import_memory import measure

    sizes = sorted({min(1000, args.rows), args.rows})
    report = {str(rows): round(measure(rows, data=args.data), 1) for rows in sizes}
    drop(MEMORY_DATABASE)
    return report


def result(new: dict, old: dict | None, memory: dict) -> dict[str, Any]:
    """The headline figures, exactly the keys of ``bench/results/lifecycle.json``."""
    phases = {phase["phase"]: phase for phase in new["phases"]}
    before = None
    if old is not None:
        before = next(p for p in old["phases"] if p["phase"] == "retrain")["command"]["seconds"]
    return {
        "empty_result_queries": new["load"]["empty"],
        "queries": new["load"]["queries"],
        "switch_seconds": phases["switch-reencode"]["serving_s"],
        "retrain_seconds_before": before,
        "retrain_seconds_after": phases["retrain"]["serving_s"],
        "import_peak_rss_mb": memory,
    }


def show(runs: dict) -> None:
    """The per-phase tables."""
    columns = ["phase", "serving_s", "built_s", "cut_over_s", "copy_seen_s", "copy_last_seen_s"]
    columns += ["stale_s", "none_stale_s", "queries", "empty", "errors", "similar_p50_ms"]
    columns += ["similar_p95_ms", "image_p50_ms", "image_p95_ms"]
    for side in ("new", "old"):
        if runs.get(side):
            rows = [
                {
                    **p,
                    **p.get("milestones", {}),
                    "serving_s": p.get("serving_s", p.get("command", {}).get("seconds")),
                }
                for p in runs[side]["phases"]
            ]
            title = f"{side} code, {runs[side]['load']['rate']:g} queries/s"
            print(dict_table(title, rows, columns))
    print(json.dumps(runs["result"], indent=2))


def code_version() -> dict[str, str]:
    """The commit and a digest of ``visualsearch/``'s sources as they are at the start (the
    tree is edited while benchmarks run)."""
    import hashlib

    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=BASE_DIR, capture_output=True, text=True
    )
    digest = hashlib.sha256()
    for path in sorted((BASE_DIR / "visualsearch").rglob("*.py")):
        digest.update(path.read_bytes())
    return {"head": head.stdout.strip(), "visualsearch_sha256": digest.hexdigest()[:16]}


def main() -> None:
    args = parse_args()
    from tests.services import RedisServer  # a private broker and cache, as bench/load does

    started = time.perf_counter()
    runs: dict[str, Any] = {"machine": {**machine(), "load_average_at_start": load_average()}}
    runs["args"], runs["code"] = plain_args(args), code_version()
    redis = RedisServer().start()
    try:
        runs["new"] = new_code(args, redis.url)
        runs["old"] = None if args.skip_old else old_code(args, redis.url)
    finally:
        redis.stop()
        if not args.keep:
            drop(DATABASE)
            drop(OLD_DATABASE)
            for name in ("new", "old"):
                shutil.rmtree(WORK / name / "media", ignore_errors=True)
    memory = {} if args.skip_memory else import_memory(args)
    runs["result"] = result(runs["new"], runs["old"], memory)
    runs["duration_s"] = round(time.perf_counter() - started, 1)
    show(runs)
    write_json(args.output, runs["result"])
    write_json(args.output.with_name(f"{args.output.stem}-runs.json"), runs)


if __name__ == "__main__":
    main()
