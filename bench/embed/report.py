"""The printed tables of ``bench/embed_bench.py``, from its report."""

from __future__ import annotations

from typing import Any

from bench.common.tables import table


def format_report(report: dict[str, Any]) -> str:
    """Decode, bare-encoder and end-to-end tables, as far as the report has them."""
    out = []
    if decode := report.get("decode"):
        ms = decode["ms_per_image"]
        out.append(f"\nFile read + decode ({decode['images']} photos, ms per image, one core)")
        out.append(
            table(
                ["stage", "ms/image"],
                [*ms.items(), ("total", decode["total_ms_per_image"])],
            )
        )
    if bare := report.get("bare"):
        batches = sorted({row["batch"] for row in bare["rows"]})
        by_key = {(r["encoder"], r["runtime"], r["threads"], r["batch"]): r for r in bare["rows"]}
        configs = list(dict.fromkeys(key[:3] for key in by_key))
        out.append(
            f"\nBare encoder images/s on decoded photos (median of {report['args']['rounds']})"
        )
        out.append(
            table(
                ["encoder", "runtime", "threads", *(f"batch {b}" for b in batches)],
                [
                    [*config, *(by_key.get((*config, b), {}).get("images_per_s") for b in batches)]
                    for config in configs
                ],
            )
        )
        out.append("\nRatios within a round (median)")
        groups: dict[tuple, dict[int, float]] = {}
        for item in bare["ratios"]:
            key = (item["ratio"], item["encoder"], item.get("runtime") or f"t{item['threads']}")
            groups.setdefault(key, {})[item["batch"]] = item["value"]
        out.append(
            table(
                ["ratio", "encoder", "at", *(f"batch {b}" for b in batches)],
                [[*key, *(values.get(b) for b in batches)] for key, values in groups.items()],
            )
        )
        notes = [
            f"{name}: preprocess {info.get('preprocess_ms_per_image')} ms/image (in the figures), "
            f"ONNX vs PyTorch min cosine {info.get('onnx_vs_pytorch_min_cosine')}"
            + (f", ONNX export {info['onnx_export_s']}s" if "onnx_export_s" in info else "")
            for name, info in bare["families"].items()
        ]
        out.append("\n".join(notes))
    if e2e := report.get("e2e"):
        rows = []
        for run in [*e2e.get("cases", []), *([e2e["inline"]] if "inline" in e2e else [])]:
            cpu = run.get("cpu_s_per_1000_images", {})
            rows.append(
                [
                    "inline reindex" if "pool" not in run else run["pool"],
                    run.get("runs", 1),
                    run.get("concurrency", "-"),
                    run.get("threads", "(2)"),
                    run["batch"],
                    run.get("seconds"),
                    run.get("images_per_s"),
                    run.get("steady_images_per_s"),
                    run.get("window_images_per_s"),
                    run.get("bare_images_per_s"),
                    run.get("ratio_to_bare"),
                    cpu.get("worker", cpu.get("command")),
                    cpu.get("postgres"),
                    cpu.get("redis"),
                    run.get("machine_busy_pct"),
                    run.get("other_processes_cpu_s"),
                    run.get("steal_pct"),
                ]
            )
        out.append(f"\nEnd-to-end reindex of {e2e['rows']:,} photos (real worker, private Redis)")
        out.append(
            table(
                [
                    "pool",
                    "runs",
                    "conc",
                    "threads",
                    "batch",
                    "seconds",
                    "img/s",
                    "steady",
                    "10s-median",
                    "bare",
                    "ratio",
                    "cpu worker",
                    "cpu pg",
                    "cpu redis",
                    "busy %",
                    "other s",
                    "steal %",
                ],  # fmt: skip
                rows,
            )
        )
        out.append(
            "img/s: rows / wall time from enqueue to the last ready row (median of the runs); "
            "steady: 10-90 % done; 10s-median: median over 10-second windows;\n"
            "cpu: CPU seconds per 1,000 images;\n"
            "bare: EfficientNet ONNX, 2 threads, same batch, measured just before the e2e runs;\n"
            "busy: machine CPU use; other s: CPU seconds of processes outside worker, Postgres "
            "and Redis during the run (a disturbed run shows here); steal: hypervisor steal"
        )
        if paired := e2e.get("paired_ratios"):
            out.append("\nSpeed-up within a round (median over rounds)")
            out.append(
                table(
                    ["case", "over", "ratio", "per round"],
                    [
                        [
                            item["case"],
                            item["over"],
                            item["ratio"],
                            " ".join(f"{value:.3f}" for value in item["rounds"]),
                        ]
                        for item in paired
                    ],
                )
            )
        if build := e2e.get("hnsw_bulk_build"):
            out.append(
                f"\nHNSW index built in bulk over {build['vectors']:,} stored vectors: "
                f"{build['seconds']}s ({build['ms_per_image']} ms/image, Postgres CPU "
                f"{build['cpu_s_per_1000_images'].get('postgres')} ms/image)"
            )
        if probe := e2e.get("write_probe"):
            out.append(f"\nStoring vectors ({probe[0]['images']} rows, batches of 32, committed)")
            out.append(
                table(
                    ["variant", "wall ms/img", "python CPU", "postgres CPU"],
                    [
                        [
                            row["variant"],
                            row["wall_ms_per_image"],
                            row["python_cpu_ms_per_image"],
                            row["postgres_cpu_ms_per_image"],
                        ]
                        for row in probe
                    ],
                )
            )
        if breakdown := e2e.get("breakdown"):
            out.append(
                f"\nIn-process pipeline, {breakdown['images']} images, batch {breakdown['batch']}:"
                f" {breakdown['images_per_s']} img/s"
            )
            out.append(table(["stage", "ms/image"], list(breakdown["ms_per_image"].items())))
            out.append(f"CPU s per 1,000 images: {breakdown['cpu_s_per_1000_images']}")
    return "\n".join(out)
