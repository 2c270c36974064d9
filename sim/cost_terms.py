"""The arithmetic under the cost models: iteration features, step lines, closed-form stretches, scalar curves.

A profile's fitted curve is evaluated here for scalars (the simulator's hot path). Every per-iteration cost is
linear in the iteration's aggregate features, so while a replica's batch stays constant the cost of decode step j is
`a + d*j` (the summed KV context grows by the batch size each step; the longest context's tail over the mean stays as
it is): the sum over k steps is an arithmetic series, which `StretchCost` evaluates and inverts in O(1). Pure and
SimPy-free.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from tokenjoule.calibrate.profile import CostCurve, DecodeSplitRule, tail_ctx_tokens
from tokenjoule.kernels.shape import IterationShape


@dataclass(frozen=True, slots=True)
class IterFeatures:
    """Aggregate features of one iteration (what every cost model reads).

    Attributes:
        new_tokens: tokens pushed through the weights (prefill tokens + one per decode sequence).
        prefill_attn_pairs: causal (query, key) pairs scored by the prefill chunks.
        prefill_ctx_tokens: KV entries the prefill chunks read from earlier chunks.
        decode_ctx_tokens: KV entries the decode sequences read.
        decode_seqs: sequences decoding one token each.
        prefill_seqs: prefill chunks (one per sequence being prefilled).
        decode_max_ctx_tokens: the longest context among the decode sequences (0 without decodes).
    """

    new_tokens: int
    prefill_attn_pairs: int = 0
    prefill_ctx_tokens: int = 0
    decode_ctx_tokens: int = 0
    decode_seqs: int = 0
    prefill_seqs: int = 0
    decode_max_ctx_tokens: int = 0

    @classmethod
    def of_shape(cls, shape: IterationShape) -> IterFeatures:
        """Features of an IterationShape."""
        return cls(shape.new_tokens, shape.prefill_attn_pairs, shape.prefill_ctx_tokens,
                   shape.decode_ctx_tokens, shape.decode_seqs, shape.prefill_seqs, shape.decode_max_ctx_tokens)


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
        return k * self.a + self.d * k * (k - 1) / 2.0


def _sum_max(lines: tuple[Line, ...], k: int) -> float:
    """Sum over steps 0..k-1 of the larger of one or two lines (they cross at most once)."""
    if len(lines) == 1:
        return lines[0].total(k)
    l1, l2 = lines
    cross = (l2.a - l1.a) / (l1.d - l2.d) if l1.d != l2.d else math.inf  # where l1 == l2
    if not math.isfinite(cross):  # parallel (or numerically so)
        return max(l1.total(k), l2.total(k))
    split = min(k, max(0, math.ceil(cross)))
    first, second = (l2, l1) if l1.d > l2.d else (l1, l2)  # `first` leads before the crossing
    head = first.total(split)
    tail = second.total(k) - second.total(split)
    return head + tail


@dataclass(frozen=True, slots=True)
class StretchCost:
    """k decode steps of a constant batch: step j takes max(time_lines)(j) s and energy_line(j) + energy_per_s * t J.

    Attributes:
        time_lines: one line, or two whose maximum is the step time (roofline's compute vs memory bound).
        energy_line: the energy not proportional to time, per step (J).
        energy_per_s: energy proportional to the step's time (W), e.g. TDP for the roofline.
    """

    time_lines: tuple[Line, ...]
    energy_line: Line = Line(0.0)
    energy_per_s: float = 0.0

    def time_s(self, k: int) -> float:
        """Seconds of the first k steps."""
        return _sum_max(self.time_lines, k)

    def energy_j(self, k: int) -> float:
        """Joules of the first k steps."""
        return self.energy_line.total(k) + self.energy_per_s * self.time_s(k)

    def steps_within(self, dt_s: float) -> int:
        """Smallest k >= 0 whose k steps end at or after `dt_s` (the first iteration boundary not before it)."""
        if dt_s <= 0.0:
            return 0
        if len(self.time_lines) == 1:
            a, d = self.time_lines[0].a, self.time_lines[0].d
            # Solve d/2 k^2 + (a - d/2) k = dt for k, then fix rounding by checking neighbours.
            b = a - d / 2.0
            k = dt_s / a if d == 0.0 else (-b + math.sqrt(b * b + 2.0 * d * dt_s)) / d
            k = max(0, math.ceil(k - 1e-9))
        else:
            lo, hi = 0, 1
            while self.time_s(hi) < dt_s:
                lo, hi = hi, hi * 2
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if self.time_s(mid) < dt_s else (lo, mid)
            k = hi
        while self.time_s(k) < dt_s:
            k += 1
        while k > 0 and self.time_s(k - 1) >= dt_s:
            k -= 1
        return k


@dataclass(frozen=True, slots=True)
class _Pwl:
    """A piecewise-linear token curve evaluated for scalars without numpy (the simulator's hot path)."""

    knots: tuple[float, ...]
    values: tuple[float, ...]
    slope_last: float

    @classmethod
    def of(cls, knots: tuple[float, ...], values: tuple[float, ...]) -> _Pwl:
        return cls(tuple(knots), tuple(values), (values[-1] - values[-2]) / (knots[-1] - knots[-2]))

    def __call__(self, x: float) -> float:
        knots, vals = self.knots, self.values
        if x >= knots[-1]:
            return vals[-1] + self.slope_last * (x - knots[-1])
        if x <= knots[0]:
            return vals[0]
        i = bisect.bisect_right(knots, x)
        t = (x - knots[i - 1]) / (knots[i] - knots[i - 1])
        return vals[i - 1] + t * (vals[i] - vals[i - 1])


# The profile's FEATURES in the order _Curve reads them (a test checks that none is missing).
_COEF_NAMES = ("prefill_attn_pairs", "prefill_ctx_tokens", "prefill_seqs", "decode_ctx_tokens",
               "decode_tail_ctx_tokens")


@dataclass(frozen=True, slots=True)
class _Curve:
    """A CostCurve (both regimes) evaluated for scalars, as `CostCurve.evaluate` does.

    The longest decode context enters as the tokens its program streams beyond an average one (`calibrate.profile.
    tail_ctx_tokens`), over the splits the profile's rule gives the batch (all of it without a rule).
    """

    decode: _Pwl
    prefill: _Pwl
    coef: tuple[float, float, float, float, float]  # in _COEF_NAMES order; a profile without one reads 0
    rule: DecodeSplitRule | None = None

    @classmethod
    def of(cls, curve: CostCurve, rule: DecodeSplitRule | None = None) -> _Curve:
        decode = _Pwl.of(curve.knots_tokens, curve.knot_values)
        prefill = _Pwl.of(curve.prefill_knots_tokens, curve.prefill_knot_values) if curve.prefill_knots_tokens \
            else decode
        return cls(decode, prefill, tuple(curve.coef.get(n, 0.0) for n in _COEF_NAMES), rule)

    def iteration(self, f: IterFeatures) -> float:
        c = self.coef
        tokens = self.prefill if (f.prefill_seqs or f.prefill_attn_pairs) else self.decode
        tail = c[4] * tail_ctx_tokens(f.decode_max_ctx_tokens, f.decode_ctx_tokens, f.decode_seqs, self.rule) \
            if c[4] else 0.0
        return (tokens(f.new_tokens) + c[0] * f.prefill_attn_pairs + c[1] * f.prefill_ctx_tokens
                + c[2] * f.prefill_seqs + c[3] * f.decode_ctx_tokens + tail)

    def decode_line(self, batch: int, ctx_sum: float, max_ctx: float) -> Line:
        """Step j of a constant batch: the summed context grows by `batch` a step and the longest by one.

        So the longest context's excess over the mean, and its tail term, stay as they were.
        """
        c = self.coef
        tail = c[4] * tail_ctx_tokens(max_ctx, ctx_sum, batch, self.rule) if c[4] else 0.0
        return Line(self.decode(batch) + c[3] * ctx_sum + tail, c[3] * batch)
