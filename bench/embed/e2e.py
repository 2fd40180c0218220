"""Part 3: the catalog re-embedded by the real worker in every configuration, round-robin, on
a private Redis; then the inline command and the references (:mod:`bench.embed.probes`)."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import BASE_DIR
from bench.common.stats import median, rounded
from bench.embed import probes
from bench.embed.bare import bare_reference
from bench.embed.decode import decode_photos
from bench.embed.worker import DATABASE, E2E

#: A worker case: pool, concurrency, encoder threads, task batch size.
Case = tuple[str, int, int, int]


def run_e2e(
    args: argparse.Namespace, bare: dict[str, Any], photos: Sequence[Path]
) -> dict[str, Any]:
    """The worker configurations, batch sizes, the inline command, the references."""
    from tests.services import RedisServer

    if os.environ.get("DATABASE_URL"):
        raise SystemExit("error: unset DATABASE_URL: the e2e part resets every row of its database")
    redis_server = RedisServer().start()
    os.environ.update(
        {
            "VISUALSEARCH_DB_NAME": DATABASE,
            "CELERY_BROKER_URL": redis_server.url,
            "REDIS_URL": redis_server.url,
            "VISUALSEARCH_ENCODER": "efficientnet",
            "DJANGO_SETTINGS_MODULE": "shop.settings",
        }
    )
    os.environ.setdefault("MEDIA_ROOT", str(BASE_DIR / "media" / "bench" / DATABASE))
    os.environ.pop("VISUALSEARCH_ENCODER_THREADS", None)
    import django

    django.setup()
    report: dict[str, Any] = {"broker": redis_server.url, "database": DATABASE, "runs": []}
    images = decode_photos(photos)
    references = {
        batch: bare_reference(bare.get("rows", []), batch, images, args)
        for batch in dict.fromkeys(args.e2e_batch_sizes)
    }
    report["bare_reference"] = references
    try:
        bench = E2E(args, redis_server.url)
        report["media_root"] = str(bench.media_root)
        print(f"e2e: importing the catalog into {DATABASE} (idempotent)…", flush=True)
        report.update(bench.prepare_catalog())
        print(f"e2e: {report['rows']:,} rows, import {report['import_s']}s", flush=True)
        pid = redis_server.process.pid

        runs: dict[Case, list[dict[str, Any]]] = {}

        def execute(case: Case, round_index: int = 0) -> None:
            run = bench.worker_run(*case, pid)
            run["round"] = round_index
            add_ratio(run, references[case[3]]["images_per_s"])
            report["runs"].append(run)
            runs.setdefault(case, []).append(run)
            print("  " + e2e_line(run), flush=True)

        def rate(case: Case) -> float:
            return median([r["images_per_s"] for r in runs[case] if r.get("images_per_s")])

        base = args.e2e_batch_sizes[0]
        cases = [(pool, c, t, base) for pool, c, t in args.e2e_configs]
        for case in cases:
            execute(case)
        measured = [case for case in cases if rate(case) == rate(case)]  # not NaN
        if measured:
            best = max(measured, key=rate)[:3]
            for case in dict.fromkeys((*best, batch) for batch in args.e2e_batch_sizes[1:]):
                if case not in cases:
                    execute(case)
                    cases.append(case)
        for index in range(1, args.e2e_repeats):  # round-robin, alternating direction
            for case in cases[::-1] if index % 2 else cases:
                execute(case, index)
        report["cases"] = [aggregate(runs[case]) for case in cases]
        report["paired_ratios"] = paired_ratios(cases, runs)
        if not args.skip_inline:
            run = bench.inline_run(base)
            add_ratio(run, references[base]["images_per_s"])
            report["inline"] = run
            print("  inline: " + e2e_line(run), flush=True)
        if bench.counts().get("ready", 0) == len(bench.pks):
            report["hnsw_bulk_build"] = probes.hnsw_build(bench)
            print(f"  HNSW bulk build: {report['hnsw_bulk_build']['seconds']}s", flush=True)
        if args.write_probe:
            images = min(args.write_probe, len(bench.pks))
            report["write_probe"] = probes.write_probe(bench, images)
            print(f"  write probe: {report['write_probe']}", flush=True)
        if args.breakdown:
            images = min(args.breakdown, len(bench.pks))
            report["breakdown"] = probes.breakdown(bench, base, images)
            print(f"  breakdown: {report['breakdown']['ms_per_image']}", flush=True)
        report["worker_logs"] = str(bench.logs)
    finally:
        redis_server.stop()
        shutil.rmtree(redis_server.dir, ignore_errors=True)
    return report


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One worker configuration over its repeated runs: medians, and every run's rate."""
    good = [run for run in runs if run.get("images_per_s")]
    first = runs[0]
    case = {
        key: first[key]
        for key in ("pool", "concurrency", "threads", "batch", "command", "write_path")
    }
    case["runs"] = len(runs)
    case["failed_runs"] = len(runs) - len(good)
    if not good:
        return {**case, "error": first.get("error")}

    def med(key: str) -> float | None:
        values = [run[key] for run in good if run.get(key) is not None]
        return rounded(median(values)) if values else None

    cpu_keys = sorted({key for run in good for key in run["cpu_s_per_1000_images"]})
    case.update(
        {
            "seconds": med("seconds"),
            "images_per_s": med("images_per_s"),
            "images_per_s_runs": [run["images_per_s"] for run in good],
            "steady_images_per_s": med("steady_images_per_s"),
            "window_images_per_s": med("window_images_per_s"),
            "cpu_s_per_1000_images": {
                key: round(median([run["cpu_s_per_1000_images"][key] for run in good]), 2)
                for key in cpu_keys
            },
            "machine_busy_pct": med("machine_busy_pct"),
            "other_processes_cpu_s": med("other_processes_cpu_s"),
            "other_processes_cpu_s_runs": [run["other_processes_cpu_s"] for run in good],
            "steal_pct": med("steal_pct"),
        }
    )
    add_ratio(case, first["bare_images_per_s"])
    return case


def paired_ratios(cases: Sequence[Case], runs: dict[Case, list[dict]]) -> list[dict[str, Any]]:
    """Speed-ups of every case over the first one, measured in the same round (medians)."""

    def label(case: Case) -> str:
        pool, concurrency, threads, batch = case
        return f"{pool} c{concurrency} t{threads} batch {batch} app _write"

    def by_round(case: Case) -> dict[int, float]:
        return {r["round"]: r["images_per_s"] for r in runs[case] if r.get("images_per_s")}

    result = []
    for case in cases[1:]:
        a, b = by_round(case), by_round(cases[0])
        values = [a[i] / b[i] for i in sorted(a.keys() & b.keys())]
        if values:
            result.append(
                {
                    "case": label(case),
                    "over": label(cases[0]),
                    "ratio": round(median(values), 3),
                    "rounds": [round(value, 3) for value in values],
                }
            )
    return result


def add_ratio(run: dict[str, Any], reference: float | None) -> None:
    """Store the bare reference and the run's ratio to it (wall and steady rates)."""
    run["bare_images_per_s"] = reference
    if reference and run.get("images_per_s"):
        run["ratio_to_bare"] = round(run["images_per_s"] / reference, 2)
        if run.get("steady_images_per_s"):
            run["steady_ratio_to_bare"] = round(run["steady_images_per_s"] / reference, 2)


def e2e_line(run: dict[str, Any]) -> str:
    """One run on one line, for the progress output."""
    if "error" in run:
        return f"{run.get('command', '')} batch {run['batch']}: ERROR {run['error'][:300]}"
    return (
        f"{run.get('pool', 'inline')} c{run.get('concurrency', '-')} t{run.get('threads', '-')} "
        f"b{run['batch']}: {run['images_per_s']} img/s ({run['seconds']}s), "
        f"steady {run['steady_images_per_s']}, ratio {run.get('ratio_to_bare')}"
    )
