"""CPU time of the processes a run involves, and embedding rates from progress samples."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from bench.common.processes import tree_cpu_seconds
from bench.common.stats import median


class CpuMeter:
    """CPU seconds of process trees (own + reaped children + live descendants) and the machine.

    ``bench`` is this process alone (its polling), whose children are the worker and Redis.
    """

    def __init__(self, roots: dict[str, int]) -> None:
        import psutil

        self.psutil = psutil
        self.roots = {**roots, "bench": os.getpid()}
        self.start = self.sample()

    def tree(self, pid: int) -> float:
        if pid == os.getpid():
            times = os.times()
            return times.user + times.system
        return tree_cpu_seconds(pid)

    def sample(self) -> dict[str, float]:
        values = {name: self.tree(pid) for name, pid in self.roots.items()}
        machine = self.psutil.cpu_times()
        steal = getattr(machine, "steal", 0.0)
        values["_steal"] = steal
        values["_busy"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0) - steal
        values["_wall"] = time.perf_counter()
        return values

    def stop(self, images: int) -> dict[str, Any]:
        end = self.sample()
        wall = end["_wall"] - self.start["_wall"]
        used = {name: end[name] - self.start[name] for name in self.roots}
        busy = end["_busy"] - self.start["_busy"]
        cores = self.psutil.cpu_count() or 1
        return {
            "cpu_s_per_1000_images": {
                name: round(value * 1000 / max(images, 1), 2) for name, value in used.items()
            },
            "machine_busy_pct": round(100 * busy / (wall * cores), 1) if wall else None,
            "other_processes_cpu_s": round(busy - sum(used.values()), 1),
            "steal_pct": round(100 * (end["_steal"] - self.start["_steal"]) / (wall * cores), 1)
            if wall
            else None,
        }


def steady_rate(samples: Sequence[tuple[float, int]], total: int) -> float | None:
    """Rows/s between 10 % and 90 % done (start-up and the tail left out)."""
    low = next(((t, n) for t, n in samples if n >= 0.1 * total), None)
    high = next(((t, n) for t, n in samples if n >= 0.9 * total), None)
    if not low or not high or high[0] <= low[0]:
        return None
    return round((high[1] - low[1]) / (high[0] - low[0]), 1)


def window_rate(samples: Sequence[tuple[float, int]], width: float = 10.0) -> float | None:
    """Median rows/s over consecutive ``width``-second windows (robust to a noisy moment)."""
    rates, anchor = [], samples[0]
    for t, n in samples[1:]:
        if t - anchor[0] >= width:
            rates.append((n - anchor[1]) / (t - anchor[0]))
            anchor = (t, n)
    return round(median(rates), 1) if len(rates) >= 3 else None
