"""The cost form of one iteration: its features, the fitted curve over them, and the curve's one evaluation.

Torch-free and numpy-only: the fitter (`calibrate/fit.py`), the profile file (`calibrate/profile.py`) and the
simulator (`sim/cost.py`) all price iterations through this module. For an iteration with `new_tokens` tokens pushed
through the weights, the latency (or energy) is

    curve_regime(new_tokens) + sum_f coef[f] * feature_f

where `curve_regime` is piecewise linear over fixed knots in `new_tokens` (flat where weight streaming or host-side
launch overhead dominates, then linear once matrix units saturate; the paper's "flat below ~128-256 tokens, then
linear") and the features are the attention and per-sequence terms named in FEATURES. There are two regimes with a
curve each: decode-only iterations and iterations with any prefill. They differ because an engine runs them
differently (CUDA graphs replay decode-only steps; prefill runs eagerly, so its host launch cost is a floor that
large prefills hide — an additive constant cannot express that, a curve of its own can).

One formula (`_form`) evaluates the curve, for a Python float (the simulator's hot path: one iteration at a time) and
for numpy arrays (projections, fits, reports) alike; only the knot lookup differs (`bisect` or `np.searchsorted`).
The form is linear in its parameters, so the fit's design matrix (`design_matrix`) is the same form with unit
parameters.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenjoule.kernels.shape import IterationShape, num_splits_for

# Linear terms beside the piecewise-linear token curves; names match IterationShape properties, except
# decode_tail_ctx_tokens (see `tail_ctx_tokens`). No per-decode-sequence term: for decode-only iterations new_tokens
# == decode sequences, so the decode curve is it. Profiles written before decode_tail_ctx_tokens have no coefficient
# for it, which reads as 0.
FEATURES = ("prefill_attn_pairs", "prefill_ctx_tokens", "prefill_seqs", "decode_ctx_tokens", "decode_tail_ctx_tokens")
# The regime indicator (1.0 when the iteration has any prefill chunk) picks the token curve; it has no coefficient.
REGIME = "has_prefill"
# The longest context `CostCurve.check_physical` prices (Llama-3.1's 128 Ki tokens): a negative coefficient may not
# pull a cost below zero for any context up to this long.
PLAUSIBLE_CONTEXT_TOKENS = 131_072


class ProfileError(ValueError):
    """A profile is missing, malformed, of another schema version, or for another model/GPU.

    Declared here, at the bottom of the profile's modules, because a profile's cost form validates itself;
    `calibrate/profile.py` raises it for the file and is where callers import it from.
    """


@dataclass(slots=True)
class IterFeatures:
    """Aggregate features of one iteration (what every cost model reads).

    Not frozen, though nothing writes into one: the simulator builds one per iteration it prices, and a frozen
    dataclass's `__init__` (a call to `object.__setattr__` per field) costs three times a plain one.

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

    @property
    def has_prefill(self) -> bool:
        """Whether the iteration has any prefill chunk (its token curve is the prefill regime's)."""
        return bool(self.prefill_seqs or self.prefill_attn_pairs)


@dataclass(frozen=True, slots=True)
class DecodeSplitRule:
    """How the engine's decode kernel splits each context, which decides how long the longest program runs.

    Each sequence gets ceil(target_programs / (batch x kv_heads)) programs, at most max_splits (`kernels/shape.py`).

    Attributes:
        target_programs: programs the kernel aims for.
        max_splits: most splits per sequence.
        kv_heads: KV heads per GPU (one program per sequence, KV head and split).
    """

    target_programs: int
    max_splits: int
    kv_heads: int

    def __post_init__(self) -> None:
        if min(self.target_programs, self.max_splits, self.kv_heads) < 1:
            raise ProfileError(f"decode_split_rule {self} needs positive integers")

    def splits(self, batch: Any) -> Any:
        """Splits per sequence for decode batches of `batch` sequences (scalar or array): `kernels.shape`'s rule."""
        def one(b: Any) -> int:
            return num_splits_for(int(b), self.kv_heads, self.target_programs, self.max_splits)

        return one(batch) if np.ndim(batch) == 0 else np.vectorize(one, otypes=[np.int64])(batch)


def tail_ctx_tokens(max_ctx: Any, sum_ctx: Any, decode_seqs: Any, rule: DecodeSplitRule | None) -> Any:
    """Context tokens the longest decode program streams beyond an average one (0 for a uniform batch).

    The summed context prices the average program; a ragged batch's longest context (over its splits; the whole of
    it without a rule) keeps one program running after the rest have finished, and sets the kernel's time.

    Args:
        max_ctx: the longest decode context (tokens), scalar or array.
        sum_ctx: the decode contexts summed (tokens).
        decode_seqs: decode sequences in the iteration.
        rule: the engine's decode split rule, or None (no splits).

    Returns:
        Tokens (float for scalars, an array for arrays).
    """
    splits = 1 if rule is None else rule.splits(decode_seqs)
    if isinstance(decode_seqs, int | float):  # one iteration (the simulator's hot path): no arrays
        return max(0.0, max_ctx - sum_ctx / max(decode_seqs, 1)) / splits
    seqs = np.maximum(np.asarray(decode_seqs, dtype=np.float64), 1.0)
    excess = np.asarray(max_ctx, dtype=np.float64) - np.asarray(sum_ctx, dtype=np.float64) / seqs
    value = np.maximum(excess, 0.0) / splits
    return float(value) if value.ndim == 0 else value


def shape_features(shape: IterationShape, rule: DecodeSplitRule | None = None) -> dict[str, float]:
    """The FEATURES of one iteration, and its regime indicator, by name (`rule`: the engine's decode splits)."""
    return {
        "prefill_attn_pairs": float(shape.prefill_attn_pairs),
        "prefill_ctx_tokens": float(shape.prefill_ctx_tokens),
        "prefill_seqs": float(shape.prefill_seqs),
        "decode_ctx_tokens": float(shape.decode_ctx_tokens),
        "decode_tail_ctx_tokens": tail_ctx_tokens(shape.decode_max_ctx_tokens, shape.decode_ctx_tokens,
                                                  shape.decode_seqs, rule),
        REGIME: 1.0 if shape.prefill else 0.0,
    }


def _form(segment: Sequence[Any], coef: Sequence[float], x: Any, pairs: Any, prefill_ctx: Any, prefill_seqs: Any,
          decode_ctx: Any, tail: Any) -> Any:
    """The cost form, for floats or arrays alike: the token curve on x's segment, then the FEATURES terms in order.

    A segment is (k0, dk, v0, dv): the curve is v0 + (x - k0) / dk * dv on it. The flat start has dk=1, dv=0 and the
    extrapolated end dk=1, dv=its slope, so one expression covers every segment with the arithmetic order the
    simulator has always used (its outputs stay byte-identical).
    """
    return _head(segment, coef, x, pairs, prefill_ctx, prefill_seqs) + coef[3] * decode_ctx + coef[4] * tail


def _head(segment: Sequence[Any], coef: Sequence[float], x: Any, pairs: Any, prefill_ctx: Any,
          prefill_seqs: Any) -> Any:
    """The form's sum before its decode terms: for a decode-only step it depends on the batch alone (memoized)."""
    k0, dk, v0, dv = segment
    return v0 + (x - k0) / dk * dv + coef[0] * pairs + coef[1] * prefill_ctx + coef[2] * prefill_seqs


def _segments(knots: Sequence[float], values: Sequence[float]) -> list[tuple[float, float, float, float]]:
    """(k0, dk, v0, dv) of each segment `bisect_right(knots, x)` picks: flat start, interior, last slope onward."""
    slope_last = (values[-1] - values[-2]) / (knots[-1] - knots[-2])
    inner = [(knots[i - 1], knots[i] - knots[i - 1], values[i - 1], values[i] - values[i - 1])
             for i in range(1, len(knots))]
    return [(knots[0], 1.0, values[0], 0.0), *inner, (knots[-1], 1.0, values[-1], slope_last)]


@dataclass(frozen=True, slots=True)
class CostCurve:
    """Fitted per-iteration latency (seconds) or energy (joules) as a function of an iteration's shape.

    Attributes:
        knots_tokens: increasing `new_tokens` values where the decode-only curve bends.
        knot_values: that curve's value at each knot (s or J).
        coef: coefficient per FEATURES name (s or J per unit of the feature).
        unit: "s" or "J".
        prefill_knots_tokens: knots of the curve for iterations with any prefill; empty means "use the decode-only
            curve for every iteration".
        prefill_knot_values: that curve's values.
    """

    knots_tokens: tuple[float, ...]
    knot_values: tuple[float, ...]
    coef: dict[str, float]
    unit: str
    prefill_knots_tokens: tuple[float, ...] = ()
    prefill_knot_values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_knots(self.knots_tokens, self.knot_values, "knots_tokens")
        if self.prefill_knots_tokens or self.prefill_knot_values:
            _check_knots(self.prefill_knots_tokens, self.prefill_knot_values, "prefill_knots_tokens")
        unknown = sorted(set(self.coef) - set(FEATURES))
        if unknown:
            raise ProfileError(f"cost curve has unknown feature(s) {unknown}; known: {list(FEATURES)}")
        if self.unit not in ("s", "J"):
            raise ProfileError(f"cost curve unit {self.unit!r} must be 's' or 'J'")

    def check_physical(self, name: str) -> None:
        """Raise ProfileError unless the curve is finite and >= 0 wherever the simulator can evaluate it.

        Checked: every knot, value and coefficient is finite, and at each knot of each regime the evaluated cost stays
        >= 0 with every feature anywhere in its plausible range (0 up to `PLAUSIBLE_CONTEXT_TOKENS` of context per new
        token; the cost is linear in the features, so the range's worst corner is where a negative coefficient's
        feature is largest). Not checked: the extrapolation past the last knot (a measured curve may fall slightly
        there, e.g. an HF decode curve measured to batch 64, without reaching zero in its engine's range).

        Args:
            name: the curve's name in messages ("latency" or "energy").
        """
        numbers = {"knots_tokens": self.knots_tokens, "knot_values": self.knot_values,
                   "prefill_knots_tokens": self.prefill_knots_tokens, "prefill_knot_values": self.prefill_knot_values,
                   "coef": tuple(self.coef.values())}
        for key, values in numbers.items():
            bad = [v for v in values if not np.isfinite(v)]
            if bad:
                raise ProfileError(f"{name} curve: {key} holds {bad[0]} (every value must be finite)")
        regimes = [("decode", self.knots_tokens, self.knot_values, 0.0)]
        if self.prefill_knots_tokens:
            regimes.append(("prefill", self.prefill_knots_tokens, self.prefill_knot_values, 1.0))
        table = self.table()
        for regime, knots, _values, has_prefill in regimes:
            x = np.asarray(knots, dtype=np.float64)
            worst = {f: np.where(np.float64(self.coef.get(f, 0.0)) < 0, hi, 0.0)
                     for f, hi in _feature_ranges(x, has_prefill > 0).items()}
            cost = table.evaluate(x, has_prefill, **worst)
            if not np.all(cost >= 0):
                i = int(np.argmin(np.where(np.isfinite(cost), cost, -np.inf)))
                raise ProfileError(f"{name} curve ({regime}) is {cost[i]:.4g} {self.unit} at new_tokens={x[i]:g} "
                                   "(features in their plausible range); costs must be finite and >= 0: re-fit "
                                   "the profile or fix the file")

    def table(self) -> CurveTable:
        """The curve's segments, ready to evaluate (build once where a curve is evaluated many times)."""
        return CurveTable.of(self)

    def token_curve(self, new_tokens: np.ndarray | float, has_prefill: np.ndarray | float = 0.0) -> np.ndarray:
        """The piecewise-linear term of the iteration's regime; past the last knot it keeps the last slope."""
        return self.table().evaluate(new_tokens, has_prefill)

    def evaluate(self, new_tokens: Any, has_prefill: Any = 0.0, **features: Any) -> np.ndarray:
        """Vectorised cost: the regime's token curve plus linear feature terms (see `CurveTable.evaluate`)."""
        return self.table().evaluate(new_tokens, has_prefill, **features)

    def of_shape(self, shape: IterationShape, rule: DecodeSplitRule | None = None) -> float:
        """Cost of one IterationShape (`rule`: the engine's decode splits, see `DecodeSplitRule`)."""
        return float(self.evaluate(shape.new_tokens, **shape_features(shape, rule)))


@dataclass(frozen=True, slots=True)
class CurveTable:
    """A CostCurve's segments, both regimes in one table, each x looked up once: how a curve is evaluated.

    Built once per curve (`CostCurve.table`); the simulator keeps one per curve for its hot path.

    Attributes:
        decode_knots: the decode-only curve's knots.
        prefill_knots: the prefill regime's knots (the decode knots when one curve serves both).
        prefill_offset: row of the prefill regime's first segment (0 when one curve serves both).
        rows: (k0, dk, v0, dv) per segment, decode regime first.
        columns: the rows' four fields as arrays, for vectorised lookups.
        coef: coefficients in FEATURES order; a feature without one reads 0.
        decode_heads: a cache filled by `decode_step`: the form's head (`_head`) of a decode-only step, by batch (a
            simulation prices a few hundred distinct batches, each thousands of times).
    """

    decode_knots: tuple[float, ...]
    prefill_knots: tuple[float, ...]
    prefill_offset: int
    rows: tuple[tuple[float, float, float, float], ...]
    columns: tuple[np.ndarray, ...]
    coef: tuple[float, ...]
    decode_heads: dict[int, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, curve: CostCurve) -> CurveTable:
        """The table of `curve`."""
        rows = _segments(curve.knots_tokens, curve.knot_values)
        offset, prefill_knots = 0, curve.knots_tokens
        if curve.prefill_knots_tokens:
            offset, prefill_knots = len(rows), curve.prefill_knots_tokens
            rows += _segments(curve.prefill_knots_tokens, curve.prefill_knot_values)
        columns = tuple(np.array(col, dtype=np.float64) for col in zip(*rows, strict=True))
        return cls(curve.knots_tokens, prefill_knots, offset, tuple(rows), columns,
                   tuple(float(curve.coef.get(n, 0.0)) for n in FEATURES))

    @property
    def uses_longest_context(self) -> bool:
        """Whether a decode's cost depends on its batch's longest context (the tail term), not only their sum."""
        return bool(self.coef[4])

    def _row(self, x: float, has_prefill: bool) -> tuple[float, float, float, float]:
        if has_prefill:
            return self.rows[bisect.bisect_right(self.prefill_knots, x) + self.prefill_offset]
        return self.rows[bisect.bisect_right(self.decode_knots, x)]

    def _gather(self, x: np.ndarray, has_prefill: np.ndarray) -> tuple[np.ndarray, ...]:
        idx = np.where(has_prefill, np.searchsorted(self.prefill_knots, x, side="right") + self.prefill_offset,
                       np.searchsorted(self.decode_knots, x, side="right"))
        return tuple(col[idx] for col in self.columns)

    def evaluate(self, new_tokens: Any, has_prefill: Any = 0.0, **features: Any) -> np.ndarray:
        """Vectorised cost: the regime's token curve plus linear feature terms (missing features count as 0).

        Args:
            new_tokens: tokens pushed through the weights, scalar or array.
            has_prefill: the regime indicator (> 0: the prefill curve), broadcast against new_tokens.
            **features: FEATURES arrays by name; other names are ignored.

        Returns:
            Seconds or joules (the curve's unit), an array shaped like the broadcast inputs.
        """
        x = np.asarray(new_tokens, dtype=np.float64)
        segment = self._gather(*np.broadcast_arrays(x, np.asarray(has_prefill) > 0))
        terms = (np.asarray(features.get(name, 0.0), dtype=np.float64) for name in FEATURES)
        return np.asarray(_form(segment, self.coef, x, *terms))

    def iteration(self, f: IterFeatures, rule: DecodeSplitRule | None = None) -> float:
        """Cost of one iteration from its aggregate features, with Python floats (the simulator's hot path).

        Args:
            f: the iteration's features.
            rule: the engine's decode splits (prices the longest context), or None.

        Returns:
            Seconds or joules.
        """
        c = self.coef
        tail = tail_ctx_tokens(f.decode_max_ctx_tokens, f.decode_ctx_tokens, f.decode_seqs, rule) if c[4] else 0.0
        x, pairs, seqs = f.new_tokens, f.prefill_attn_pairs, f.prefill_seqs
        if seqs or pairs:  # `f.has_prefill`; then `_row` and `_form`, written out (the same arithmetic, in order)
            k0, dk, v0, dv = self.rows[bisect.bisect_right(self.prefill_knots, x) + self.prefill_offset]
        else:
            k0, dk, v0, dv = self.rows[bisect.bisect_right(self.decode_knots, x)]
        return (v0 + (x - k0) / dk * dv + c[0] * pairs + c[1] * f.prefill_ctx_tokens + c[2] * seqs
                + c[3] * f.decode_ctx_tokens + c[4] * tail)

    def decode_step(self, batch: int, ctx_sum_tokens: float, max_ctx_tokens: float,
                    rule: DecodeSplitRule | None = None) -> tuple[float, float]:
        """(cost of a decode-only step, its growth per further step) for a constant batch.

        Step j of the batch reads ctx_sum + j x batch context tokens and its longest context grows by one, so the
        longest context's excess over the mean, and its tail term, stay as they were: cost(j) = first + j x growth.

        Args:
            batch: decode sequences.
            ctx_sum_tokens: their contexts summed at the first step.
            max_ctx_tokens: the longest of them at the first step.
            rule: the engine's decode splits, or None.

        Returns:
            (first step's cost, growth per step), in the curve's unit.
        """
        c = self.coef
        head = self.decode_head(batch)
        tail = tail_ctx_tokens(max_ctx_tokens, ctx_sum_tokens, batch, rule) if c[4] else 0.0
        return head + c[3] * ctx_sum_tokens + c[4] * tail, c[3] * batch  # `_form`'s last two terms

    def decode_head(self, batch: int) -> float:
        """The form's head (`_head`) of a decode-only step of `batch` sequences: its cost before the context terms."""
        head = self.decode_heads.get(batch)
        if head is None:
            head = self.decode_heads[batch] = _head(self._row(batch, False), self.coef, batch, 0, 0, 0)
        return head


def _feature_ranges(new_tokens: np.ndarray, prefill: bool) -> dict[str, np.ndarray]:
    """Each feature's plausible largest value at `new_tokens` (prefill features are 0 in decode-only iterations)."""
    ctx = new_tokens * PLAUSIBLE_CONTEXT_TOKENS
    zero = np.zeros_like(new_tokens)
    return {"prefill_attn_pairs": ctx if prefill else zero, "prefill_ctx_tokens": ctx if prefill else zero,
            "prefill_seqs": new_tokens if prefill else zero, "decode_ctx_tokens": ctx,
            "decode_tail_ctx_tokens": np.full_like(new_tokens, PLAUSIBLE_CONTEXT_TOKENS)}


def _check_knots(knots: tuple[float, ...], values: tuple[float, ...], name: str) -> None:
    if len(knots) < 2 or len(knots) != len(values):
        raise ProfileError(f"cost curve {name} needs >= 2 knots and one value per knot")
    if any(b <= a for a, b in zip(knots, knots[1:], strict=False)):
        raise ProfileError(f"cost curve {name} must increase strictly")


def token_basis(new_tokens: Any, knots: Sequence[float]) -> np.ndarray:
    """The token curve's basis: column j is the curve with value 1 at knot j and 0 at the others ("hat" functions).

    A curve with knot values v equals `token_basis(x, knots) @ v`.

    Args:
        new_tokens: 1-D array of x.
        knots: strictly increasing knots.

    Returns:
        Array of shape (len(new_tokens), len(knots)).
    """
    x = np.asarray(new_tokens, dtype=np.float64)
    cols = []
    for j in range(len(knots)):
        hat = CostCurve(tuple(knots), tuple(1.0 if i == j else 0.0 for i in range(len(knots))), {}, "s")
        cols.append(hat.token_curve(x))
    return np.column_stack(cols) if cols else np.empty((x.size, 0))


def design_matrix(new_tokens: np.ndarray, features: Mapping[str, np.ndarray], knots: Sequence[float],
                  prefill_knots: Sequence[float] = ()) -> np.ndarray:
    """The form's design matrix: a hat basis column per knot of each regime's curve, then one per FEATURES name.

    `design_matrix(...) @ [*knot_values, *prefill_knot_values, *coef in FEATURES order]` is the curve's cost. With
    `prefill_knots`, the decode-only curve's columns are zero on iterations with prefill (`features["has_prefill"]`
    > 0) and the prefill curve's columns are zero elsewhere.

    Args:
        new_tokens: 1-D array of tokens pushed through the weights.
        features: FEATURES arrays by name, plus REGIME; a missing one is zero.
        knots: the decode-only (or only) curve's knots.
        prefill_knots: the prefill curve's knots, or empty for one curve.

    Returns:
        Array of shape (points, len(knots) + len(prefill_knots) + len(FEATURES)).
    """
    x = np.asarray(new_tokens, dtype=np.float64)
    has_prefill = np.asarray(features.get(REGIME, np.zeros_like(x)), dtype=np.float64) > 0
    regimes = [(knots, ~has_prefill if len(prefill_knots) else np.ones_like(has_prefill))]
    if len(prefill_knots):
        regimes.append((prefill_knots, has_prefill))
    blocks = [np.where(mask[:, None], token_basis(x, regime_knots), 0.0) for regime_knots, mask in regimes]
    blocks.append(np.column_stack([np.asarray(features.get(name, np.zeros_like(x)), dtype=np.float64)
                                   for name in FEATURES]))
    return np.hstack(blocks)
