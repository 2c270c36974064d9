"""Timing helpers: CUDA-event timing after a warm-up, reported as median and spread.

torch is imported inside the functions that need it; without CUDA the host clock is used (and says so).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TimingStats:
    """Median and spread of repeated timings.

    Attributes:
        median_s: median time.
        p10_s: 10th percentile.
        p90_s: 90th percentile.
        min_s: fastest.
        mean_s: mean.
        n: number of timings.
        clock: "cuda-events" or "host".
    """

    median_s: float
    p10_s: float
    p90_s: float
    min_s: float
    mean_s: float
    n: int
    clock: str

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread."""
        return (self.p90_s - self.p10_s) / self.median_s if self.median_s > 0 else 0.0


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times_s: Sequence[float], clock: str = "host") -> TimingStats:
    """TimingStats of a non-empty list of timings (ValueError if empty or negative)."""
    if not times_s:
        raise ValueError("times_s must not be empty")
    if min(times_s) < 0:
        raise ValueError(f"negative timing {min(times_s)}")
    ordered = sorted(float(t) for t in times_s)
    return TimingStats(statistics.median(ordered), _quantile(ordered, 0.1), _quantile(ordered, 0.9), ordered[0],
                       statistics.fmean(ordered), len(ordered), clock)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def time_fn(fn: Callable[[], object], warmup: int = 3, repeats: int = 10, use_cuda: bool | None = None) -> TimingStats:
    """Time `fn` `repeats` times after `warmup` calls: CUDA events around each call when CUDA is present.

    Each call is timed on its own (events recorded before and after, then synchronized), so host launch overhead
    that the GPU waits on is included, as in a serving loop (gpt-fast and nanoGPT's bench.py warm up the same way).

    Args:
        fn: the work; launches on the current CUDA stream.
        warmup: untimed calls first (compilation, autotuning, allocator growth).
        repeats: timed calls.
        use_cuda: force the clock (None: CUDA events when available).

    Returns:
        TimingStats.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    cuda = _cuda_available() if use_cuda is None else use_cuda
    for _ in range(warmup):
        fn()
    if not cuda:
        return summarize(_host_times(fn, repeats), "host")
    import torch

    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)  # elapsed_time is in ms
    return summarize(times, "cuda-events")


def _host_times(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
