"""Constant-memory accumulators for streamed traces: exact integer token percentiles, and arrival burstiness."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_OVERFLOW_KEEP = 1 << 22  # values above the cap kept exactly, at most this many (32 MiB)


@dataclass(frozen=True, slots=True)
class TokenSummary:
    """Min, percentiles (numpy's linear interpolation), max and mean of a token-count column.

    Attributes:
        min: smallest value, tokens.
        p50: median, tokens.
        p90: 90th percentile, tokens.
        p99: 99th percentile, tokens.
        max: largest value, tokens.
        mean: mean, tokens.
        exact: False if some percentile fell among values above the cap that could not all be kept (then None).
    """

    min: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: int
    mean: float
    exact: bool = True


class TokenHistogram:
    """Counts of each integer token value below `cap_tokens`; values at or above the cap are kept aside.

    Memory is O(largest value seen below the cap), independent of the number of rows.
    """

    def __init__(self, cap_tokens: int = 1 << 20) -> None:
        self.cap_tokens = cap_tokens
        self.counts = np.zeros(0, np.int64)
        self.overflow: list[np.ndarray] = []
        self.n_overflow = 0
        self.n = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None

    def add(self, values: np.ndarray) -> None:
        """Count a batch of non-negative integer values."""
        if len(values) == 0:
            return
        values = np.asarray(values, np.int64)
        self.n += len(values)
        self.total += int(values.sum())
        lo, hi = int(values.min()), int(values.max())
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)
        if hi >= self.cap_tokens:
            over = values >= self.cap_tokens
            self.n_overflow += int(over.sum())
            if self.n_overflow <= _OVERFLOW_KEEP:
                self.overflow.append(values[over])
            values = values[~over]
        counts = np.bincount(values)
        if len(counts) > len(self.counts):
            grown = np.zeros(len(counts), np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[: len(counts)] += counts

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) with numpy's default linear interpolation; None if it is not known exactly."""
        if self.n == 0:
            return None
        h = (self.n - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, self.n - 1)
        cum = np.cumsum(self.counts)
        v_lo, v_hi = self._at_rank(lo, cum), self._at_rank(hi, cum)
        if v_lo is None or v_hi is None:
            return None
        t = h - lo  # numpy's _lerp: from the nearer end, so results match np.percentile to the last bit
        return float(v_lo + (v_hi - v_lo) * t) if t < 0.5 else float(v_hi - (v_hi - v_lo) * (1 - t))

    def _at_rank(self, rank: int, cum: np.ndarray) -> int | None:
        below = int(cum[-1]) if len(cum) else 0
        if rank < below:
            return int(np.searchsorted(cum, rank, side="right"))
        if self.n_overflow > _OVERFLOW_KEEP:
            return None
        return int(np.sort(np.concatenate(self.overflow))[rank - below])

    def summary(self) -> TokenSummary:
        """Summary of everything added so far (needs at least one value)."""
        p50, p90, p99 = (self.percentile(q) for q in (0.5, 0.9, 0.99))
        exact = None not in (p50, p90, p99)
        return TokenSummary(int(self.min), p50, p90, p99, int(self.max), self.total / self.n, exact)


class ArrivalStats:
    """Span, inter-arrival CV and per-second index of dispersion of arrivals fed in order, batch by batch.

    Gap mean and variance are merged across batches with Chan et al.'s pairwise update; per-second counts
    carry the last, still open, second to the next batch. Once an arrival goes back in time, `sorted` turns
    False and the burstiness figures are no longer defined (None).
    """

    def __init__(self) -> None:
        self.n = 0
        self.first = self.last = self.min = self.max = 0.0
        self.sorted = True
        self.gap_n, self.gap_mean, self.gap_m2 = 0, 0.0, 0.0
        self.open_sec, self.open_count, self.sum_sq_counts = -1, 0, 0

    def add(self, arrival_s: np.ndarray) -> None:
        """Feed the next batch of arrival times, seconds."""
        if len(arrival_s) == 0:
            return
        arrival_s = np.asarray(arrival_s, np.float64)
        if self.n == 0:
            self.first = self.min = self.max = float(arrival_s[0])
            gaps = np.diff(arrival_s)
        else:
            gaps = np.diff(arrival_s, prepend=self.last)
        self.min, self.max = min(self.min, float(arrival_s.min())), max(self.max, float(arrival_s.max()))
        self.n += len(arrival_s)
        self.last = float(arrival_s[-1])
        if self.sorted and len(gaps) and float(gaps.min()) < 0:
            self.sorted = False
        if self.sorted:
            self._add_gaps(gaps)
            self._add_seconds(np.floor(arrival_s - self.first).astype(np.int64))

    def _add_gaps(self, gaps: np.ndarray) -> None:
        if len(gaps) == 0:
            return
        n_b, mean_b = len(gaps), float(gaps.mean())
        m2_b = float(((gaps - mean_b) ** 2).sum())
        n = self.gap_n + n_b
        delta = mean_b - self.gap_mean
        self.gap_m2 += m2_b + delta**2 * self.gap_n * n_b / n
        self.gap_mean += delta * n_b / n
        self.gap_n = n

    def _add_seconds(self, sec: np.ndarray) -> None:
        starts = np.flatnonzero(np.concatenate(([True], sec[1:] != sec[:-1])))
        secs, counts = sec[starts], np.diff(np.append(starts, len(sec)))
        if secs[0] == self.open_sec:
            counts[0] += self.open_count
        else:
            self.sum_sq_counts += self.open_count**2
        self.sum_sq_counts += int((counts[:-1] ** 2).sum())
        self.open_sec, self.open_count = int(secs[-1]), int(counts[-1])

    @property
    def span_s(self) -> float:
        """Last minus first arrival (max minus min when unsorted), seconds."""
        return self.max - self.min

    @property
    def interarrival_cv(self) -> float | None:
        """Population std / mean of the gaps; None if unsorted, fewer than 2 arrivals or all at one instant."""
        if not self.sorted or self.gap_n == 0 or self.gap_mean <= 0:
            return None
        return math.sqrt(self.gap_m2 / self.gap_n) / self.gap_mean

    @property
    def dispersion_1s(self) -> float | None:
        """Variance / mean of arrivals per whole 1-s window [k, k+1) s after the first arrival.

        The last window, cut short by the end of the trace, is left out: its low count would inflate the index
        (by about 7% for a 5,000 s Poisson trace). None if unsorted or shorter than one whole second.
        """
        if not self.sorted or self.open_sec < 1:
            return None
        windows = self.open_sec
        mean = (self.n - self.open_count) / windows
        if mean == 0:
            return None
        var = self.sum_sq_counts / windows - mean**2
        return max(var, 0.0) / mean
