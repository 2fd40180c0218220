"""Child processes: stopping them, and the CPU time and memory of a process tree (psutil)."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate ``process``; kill it if it has not exited after ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants (0 if gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        children = root.children(recursive=True)
    except psutil.Error:
        return 0.0
    for child in children:
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def tree_memory(pid: int) -> dict[str, Any]:
    """RSS and PSS (MB) of a process and its descendants, in all and per process."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {"rss_mb": 0.0, "pss_mb": 0.0, "processes": []}
    rows = []
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        rows.append(
            {
                "pid": process.pid,
                "rss_mb": round(info.rss / 2**20, 1),
                "pss_mb": round(getattr(info, "pss", info.rss) / 2**20, 1),
            }
        )
    return {
        "rss_mb": round(sum(r["rss_mb"] for r in rows), 1),
        "pss_mb": round(sum(r["pss_mb"] for r in rows), 1),
        "processes": rows,
    }
