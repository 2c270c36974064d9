"""Closed-form decode stretches: k steps of a constant batch priced and inverted in O(1).

Every cost model prices an iteration linearly in its aggregate features, so while a replica's batch stays constant
the cost of decode step j is `a + d*j` (the summed KV context grows by the batch size each step; the longest
context's tail over the mean stays as it is): the sum over k steps is an arithmetic series, which `StretchCost`
evaluates and inverts. The roofline's step time is the larger of two such lines (compute vs memory bound). Pure and
SimPy-free.

The simulator builds a `StretchCost` for every decode stretch it runs (about two per request), so it is a plain
slotted dataclass of floats, not a frozen one holding `Line`s: a frozen dataclass's `__init__` sets each field
through `object.__setattr__`, three objects cost three constructions, and nothing writes into it after construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def _series(a: float, d: float, k: int) -> float:
    """Sum of `a + d*j` over steps j = 0..k-1 (arithmetic series)."""
    return k * a + d * k * (k - 1) / 2.0


@dataclass(frozen=True, slots=True)
class Line:
    """Per-step cost `a + d*j` for step j = 0, 1, ... of a stretch."""

    a: float
    d: float = 0.0

    def at(self, j: float) -> float:
        """Cost of step j."""
        return self.a + self.d * j

    def total(self, k: int) -> float:
        """Sum over steps 0..k-1 (arithmetic series)."""
        return _series(self.a, self.d, k)


def _sum_max(l1: Line, l2: Line, k: int) -> float:
    """Sum over steps 0..k-1 of the larger of two lines (they cross at most once)."""
    cross = (l2.a - l1.a) / (l1.d - l2.d) if l1.d != l2.d else math.inf  # where l1 == l2
    if not math.isfinite(cross):  # parallel (or numerically so)
        return max(l1.total(k), l2.total(k))
    split = min(k, max(0, math.ceil(cross)))
    first, second = (l2, l1) if l1.d > l2.d else (l1, l2)  # `first` leads before the crossing
    head = first.total(split)
    tail = second.total(k) - second.total(split)
    return head + tail


@dataclass(slots=True)
class StretchCost:
    """k decode steps of a constant batch, priced in closed form.

    Step j takes `time_a + time_d*j` seconds (or the larger of that and `bound`) and `energy_a + energy_d*j +
    energy_per_s * its seconds` joules.

    Attributes:
        time_a: seconds of step 0.
        time_d: growth of a step's seconds per step.
        energy_a: joules of step 0 not proportional to its time.
        energy_d: their growth per step.
        energy_per_s: energy proportional to the step's time (W), e.g. TDP for the roofline.
        bound: a second time line whose maximum with the first is the step time (the roofline's memory bound).
    """

    time_a: float
    time_d: float
    energy_a: float = 0.0
    energy_d: float = 0.0
    energy_per_s: float = 0.0
    bound: Line | None = None

    def time_s(self, k: int) -> float:
        """Seconds of the first k steps."""
        if self.bound is None:
            return k * self.time_a + self.time_d * k * (k - 1) / 2.0  # `_series`, written out (hot path)
        return _sum_max(Line(self.time_a, self.time_d), self.bound, k)

    def energy_j(self, k: int) -> float:
        """Joules of the first k steps."""
        return self.energy_of(k, self.time_s(k))

    def energy_of(self, k: int, time_s: float) -> float:
        """Joules of the first k steps, given their seconds (`time_s(k)`, already at hand in the simulator)."""
        return k * self.energy_a + self.energy_d * k * (k - 1) / 2.0 + self.energy_per_s * time_s  # `_series` + ...

    def steps_within(self, dt_s: float) -> int:
        """Smallest k >= 0 whose k steps end at or after `dt_s` (the first iteration boundary not before it)."""
        return self.boundary_after(dt_s)[0]

    def boundary_after(self, dt_s: float) -> tuple[int, float]:
        """(k, time_s(k)) of the first iteration boundary at or after `dt_s` (k as `steps_within`)."""
        if dt_s <= 0.0:
            return 0, self.time_s(0)
        if self.bound is not None:
            return self._boundary_by_bisection(dt_s)
        a, d = self.time_a, self.time_d
        # Solve d/2 k^2 + (a - d/2) k = dt for k, then fix rounding by checking neighbours (`time_s(k)` is
        # `_series(a, d, k)` here, written out: nearly every arrival asks this of a stretch it may cut).
        b = a - d / 2.0
        k = dt_s / a if d == 0.0 else (-b + math.sqrt(b * b + 2.0 * d * dt_s)) / d
        k = math.ceil(k - 1e-9)
        k = k if k > 0 else 0  # `max(0, k)`, without the call: nearly every arrival asks
        t = k * a + d * k * (k - 1) / 2.0  # `_series(a, d, k)`, written out here and below
        while t < dt_s:
            k += 1
            t = k * a + d * k * (k - 1) / 2.0
        while k > 0:
            before = (k - 1) * a + d * (k - 1) * (k - 2) / 2.0
            if before < dt_s:
                break
            k, t = k - 1, before
        return k, t

    def _boundary_by_bisection(self, dt_s: float) -> tuple[int, float]:
        """`boundary_after` where a step's time is the larger of two lines: bisect on `time_s`, check neighbours."""
        lo, hi = 0, 1
        while self.time_s(hi) < dt_s:
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.time_s(mid) < dt_s else (lo, mid)
        k = hi
        t = self.time_s(k)
        while t < dt_s:
            k += 1
            t = self.time_s(k)
        while k > 0:
            before = self.time_s(k - 1)
            if before < dt_s:
                break
            k, t = k - 1, before
        return k, t
