"""Timing helpers the benchmarks share (run as `python bench/<name>.py`, so bench/ is on the path)."""

from __future__ import annotations

import time


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]
