"""Fit each GPU operator class's time and energy per call from its physical size (FLOPs, bytes, a few counts).

Pure and torch-free: arrays in, an `OperatorFit` (parameters with units, relative errors) out. The forms, chosen by
looking at the H200 sweep (`calibrate/profiles/measurements/h200_operators_2026-12-03/`), extrapolate to shapes of
models that were not swept because they are written in physical quantities only:

- time: `c0 + (sum_i (x_i * c_i) ** p) ** (1 / p)` over the class's TERMS (bytes moved, FLOPs, ...). With p = 1
  this is the additive form c0 + bytes/B + flops/F; larger p is a smooth roofline max (GEMMs: memory-bound at small
  M, compute-bound at large M, both partly in between; on the H200 sweep the fit picks p = 4 there). For a fixed
  (c0, p) the form is linear in c_i ** p, so the fit is a grid over (c0, p) with non-negative least squares on
  relative error (`fit.solve_relative`) inside; with p = 1, c0 is also solved with the coefficients (`_fit_time`).
- energy: `P_busy * t + e_byte * bytes + e_flop * flops` (NNLS on relative error): static power while the operator
  runs, plus energy per byte moved and per FLOP. t is the *fitted* time, as where the composition evaluates it: with
  the measured time, a point whose time the fit misses (GEMMs of 64-256 rows read 10-30% short) had its energy
  missed by as much (the H200 sweep's energy error, median over points: GEMM 4.0% -> 3.5%, rest 7.8% -> 4.4%,
  decode attention 4.9% -> 4.1%, prefill attention 5.6% -> 4.4%). The power a call draws is capped:
  `min(that, cap * t)`. The board's power limiter holds sustained work near its limit (the H200 sweep's GEMMs read
  at most 741 W, where the linear form asked up to 918 W), so a linear fit through those points priced the GEMMs of
  decode batches (M = 16-64) low: median -3.9%, down to -15%; with the cap +0.4%. The cap is chosen per class, from
  no cap and quantiles of the class's measured powers, by the same score as the time form, with the linear terms
  fitted on the points it leaves under it (fourth H200 lease's sweep: GEMM energy median / p95 error 3.5% / 15.5%
  -> 2.7% / 8.0%, leave-one-model-out 3.8% / 16.2% -> 2.8% / 8.1%; decode attention 4.0% / 11.3% -> 3.1% / 10.2%).
  Measured limit: short compute bursts after idle draw more than the sustained cap (30 ms of GEMMs after 30 ms of
  idle: about 910 W; `validation/h200_2026-12-04_idle_tail/`), which a per-call cap cannot see.

Leave-one-model-out: points whose `models` name only model X are held out, the class is refitted on the rest, and
the held-out points' errors are pooled over X; a class without such points reports None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenjoule.calibrate.fit import solve_relative

# Per class: the size terms its time is a function of (besides the constant c0).
# `experts` is the MoE layer's expected distinct experts touched (each is one grouped-GEMM problem), `row_tokens`
# the length of one sampled row (the argmax reduction over the vocabulary runs per row).
TERMS: dict[str, tuple[str, ...]] = {
    "gemm": ("bytes", "flops"),
    "prefill_attn": ("bytes", "flops"),
    "decode_attn": ("bytes", "flops"),
    "moe": ("bytes", "flops", "experts"),
    "rest": ("bytes",),
    "sample": ("bytes", "row_tokens"),
}
TERM_UNITS = {"bytes": "s/byte", "flops": "s/FLOP", "experts": "s/expert", "row_tokens": "s/token"}
ENERGY_TERMS = ("time_s", "bytes", "flops")
ENERGY_UNITS = {"time_s": "W", "bytes": "J/byte", "flops": "J/FLOP"}
POWERS = (1.0, 1.5, 2.0, 3.0, 4.0)
# Power caps tried by the energy fit: these quantiles (%) of the class's measured powers, beside no cap.
CAP_QUANTILES = np.linspace(50.0, 100.0, 26)
CAP_ITERATIONS = 20


@dataclass(frozen=True, slots=True)
class OperatorFit:
    """One operator class's fitted time and energy per call.

    Attributes:
        op: the class (a TERMS key).
        c0_s: fixed time per call (s).
        power: the smooth-max exponent p (1: additive).
        time_coef: per TERMS name, seconds per unit of the term (see TERM_UNITS).
        energy_coef: per ENERGY_TERMS name: busy power (W), J per byte, J per FLOP.
        errors: relative errors |pred - measured| / measured: train and leave-one-model-out, time and energy.
        power_cap_w: the most power a call draws (W): the board's power limiter holds it there whatever the bytes
            and FLOPs ask for; None where the class's fit found no cap (profiles written before it have none).
    """

    op: str
    c0_s: float
    power: float
    time_coef: dict[str, float]
    energy_coef: dict[str, float]
    errors: dict[str, Any] = field(default_factory=dict)
    power_cap_w: float | None = None

    def __post_init__(self) -> None:
        if self.op not in TERMS:
            raise ValueError(f"op={self.op!r} must be one of {tuple(TERMS)}")
        if set(self.time_coef) != set(TERMS[self.op]):
            raise ValueError(f"{self.op}: time_coef terms {sorted(self.time_coef)} must be {list(TERMS[self.op])}")
        if set(self.energy_coef) != set(ENERGY_TERMS):
            raise ValueError(f"{self.op}: energy_coef terms {sorted(self.energy_coef)} must be {list(ENERGY_TERMS)}")
        values = [self.c0_s, *self.time_coef.values(), *self.energy_coef.values()]
        if min(values) < 0 or not all(np.isfinite(values)):
            raise ValueError(f"{self.op}: coefficients must be finite and >= 0, got {values}")
        if self.power < 1:
            raise ValueError(f"{self.op}: power={self.power} must be >= 1")
        if self.power_cap_w is not None and not (np.isfinite(self.power_cap_w) and self.power_cap_w > 0):
            raise ValueError(f"{self.op}: power_cap_w={self.power_cap_w} must be a positive number or None")

    def time_s(self, **terms: Any) -> Any:
        """Seconds per call from the class's TERMS (scalars or arrays); a missing term counts as 0."""
        p = self.power
        total = sum((np.asarray(terms.get(n, 0.0), dtype=np.float64) * c) ** p for n, c in self.time_coef.items())
        return self.c0_s + total ** (1.0 / p)

    def energy_j(self, time_s: Any, **terms: Any) -> Any:
        """Joules per call for a call lasting `time_s` with the given bytes and FLOPs."""
        e = self.energy_coef
        t = np.asarray(time_s, dtype=np.float64)
        linear = (e["time_s"] * t + e["bytes"] * np.asarray(terms.get("bytes", 0.0))
                  + e["flops"] * np.asarray(terms.get("flops", 0.0)))
        return linear if self.power_cap_w is None else np.minimum(linear, self.power_cap_w * t)

    def cost(self, **terms: Any) -> tuple[Any, Any]:
        """(seconds, joules) per call at the fitted time."""
        t = self.time_s(**terms)
        return t, self.energy_j(t, **terms)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with units."""
        return {"op": self.op, "c0_s": self.c0_s, "power": self.power, "time_coef": dict(self.time_coef),
                "time_units": {n: TERM_UNITS[n] for n in self.time_coef}, "energy_coef": dict(self.energy_coef),
                "energy_units": dict(ENERGY_UNITS), "power_cap_w": self.power_cap_w, "errors": dict(self.errors)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OperatorFit:
        """Build from `to_dict`'s form (KeyError/ValueError on a bad one)."""
        return cls(str(data["op"]), float(data["c0_s"]), float(data["power"]),
                   {str(k): float(v) for k, v in data["time_coef"].items()},
                   {str(k): float(v) for k, v in data["energy_coef"].items()}, dict(data.get("errors") or {}),
                   None if data.get("power_cap_w") is None else float(data["power_cap_w"]))


def _rel(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred / y - 1.0)


def _score(err: np.ndarray) -> float:
    """What the time and energy fits minimize over their candidates: median + half the p95 of relative errors."""
    return float(np.median(err) + 0.5 * np.percentile(err, 95))


def _summary(err: np.ndarray) -> dict[str, float | int]:
    return {"n": int(err.size), "median": float(np.median(err)), "p95": float(np.percentile(err, 95))}


def _fit_time(op: str, terms: Mapping[str, np.ndarray], time_s: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """(c0, p, coefficients) of the time form with the best score (median + half the p95 of the relative errors).

    For p > 1, c0 is searched on a grid below the fastest point ((t - c0) ** p must stay positive). For p = 1 the form
    is linear in c0 too, so c0 is also solved with the other coefficients, a candidate beside the grid's: on the grid
    alone, capped at 0.95 of the fastest point, the H200 sweep's elementwise `rest` class sat at the cap (23.2 us;
    solved, 26.9 us). Leave-one-model-out median time errors: rest 12.4% -> 6.6%, decode attention 14.3% -> 9.1%,
    prefill attention 12.1% -> 11.4%; GEMMs unchanged (p = 4).
    """
    names = TERMS[op]
    cols = [np.asarray(terms[n], dtype=np.float64) for n in names]
    powered = {p: np.column_stack([c ** p for c in cols]) for p in POWERS}  # the terms ** p, once per p
    candidates: list[tuple[float, float, np.ndarray]] = []  # (c0, p, coefficients ** p)
    if 1.0 in POWERS:
        q = solve_relative(np.column_stack([np.ones_like(time_s), powered[1.0]]), time_s)
        candidates.append((float(q[0]), 1.0, q[1:]))
    for c0 in np.linspace(0.0, 0.95 * float(time_s.min()), 24):
        for p in POWERS:
            candidates.append((float(c0), p, solve_relative(powered[p], (time_s - c0) ** p)))
    best: tuple[float, float, float, np.ndarray] | None = None
    for c0, p, q in candidates:
        score = _score(_rel(c0 + (powered[p] @ q) ** (1.0 / p), time_s))
        if best is None or score < best[0]:
            best = (score, c0, p, q)
    assert best is not None
    _, c0, p, q = best
    return c0, p, {n: float(v) ** (1.0 / p) for n, v in zip(names, q, strict=True)}


def fit_operator_once(op: str, terms: Mapping[str, Sequence[float]], time_s: Sequence[float],
                      energy_j: Sequence[float]) -> OperatorFit:
    """Fit one class's time and energy per call (no error statistics; see `fit_operator`).

    Args:
        op: the class (a TERMS key).
        terms: per TERMS name, the points' values (bytes, FLOPs, experts, row tokens).
        time_s: measured GPU time per call.
        energy_j: measured energy per call.

    Returns:
        The fit.
    """
    t = np.asarray(time_s, dtype=np.float64)
    e = np.asarray(energy_j, dtype=np.float64)
    cols = {n: np.asarray(v, dtype=np.float64) for n, v in terms.items()}
    c0, p, coef = _fit_time(op, cols, t)
    fitted_t = OperatorFit(op, c0, p, coef, dict.fromkeys(ENERGY_TERMS, 0.0)).time_s(**cols)
    a = np.column_stack([fitted_t, cols.get("bytes", np.zeros_like(t)), cols.get("flops", np.zeros_like(t))])
    q, cap = _fit_energy(a, e, e / t)
    return OperatorFit(op, c0, p, coef, dict(zip(ENERGY_TERMS, (float(v) for v in q), strict=True)), power_cap_w=cap)


def _fit_energy(a: np.ndarray, e: np.ndarray, measured_w: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Energy coefficients and power cap with the best `_score`.

    Candidates: no cap, and each of CAP_QUANTILES of the measured powers. For a cap, the linear form is fitted on the
    points it leaves under the cap, repeated until that set stops changing (a capped point's energy is the cap times
    its time, whatever its bytes and FLOPs).
    """
    t = a[:, 0]
    best: tuple[float, np.ndarray, float | None] | None = None
    for cap in (None, *np.unique(np.percentile(measured_w, CAP_QUANTILES))):
        under = np.ones(e.size, dtype=bool)
        for _ in range(CAP_ITERATIONS):
            q = solve_relative(a[under], e[under])
            if cap is None:
                break
            now = a @ q < cap * t
            if (now == under).all() or now.sum() < a.shape[1]:
                break
            under = now
        score = _score(_rel(a @ q if cap is None else np.minimum(a @ q, cap * t), e))
        if best is None or score < best[0]:
            best = (score, q, None if cap is None else float(cap))
    assert best is not None
    return best[1], best[2]


def fit_operator(op: str, terms: Mapping[str, Sequence[float]], time_s: Sequence[float], energy_j: Sequence[float],
                 models: Sequence[str] = ()) -> OperatorFit:
    """Fit one class and measure its errors: on the fitted points and leave-one-model-out.

    Args:
        op: the class (a TERMS key).
        terms: per TERMS name, the points' values.
        time_s: measured GPU time per call.
        energy_j: measured energy per call.
        models: per point, the comma-separated models whose shapes it has (empty: no leave-one-model-out).

    Returns:
        The fit on every point, with `errors`: train and lomo, time and energy (energy at the fitted time).
    """
    t = np.asarray(time_s, dtype=np.float64)
    e = np.asarray(energy_j, dtype=np.float64)
    cols = {n: np.asarray(v, dtype=np.float64) for n, v in terms.items()}
    fit = fit_operator_once(op, cols, t, e)
    pt, pe = fit.cost(**cols)
    errors: dict[str, Any] = {"train_time": _summary(_rel(pt, t)), "train_energy": _summary(_rel(pe, e))}
    lomo_t, lomo_e = _lomo(op, cols, t, e, list(models))
    errors["lomo_time"] = _summary(lomo_t) if lomo_t.size else None
    errors["lomo_energy"] = _summary(lomo_e) if lomo_e.size else None
    return OperatorFit(op, fit.c0_s, fit.power, fit.time_coef, fit.energy_coef, errors, fit.power_cap_w)


def _lomo(op: str, cols: Mapping[str, np.ndarray], t: np.ndarray, e: np.ndarray,
          models: list[str]) -> tuple[np.ndarray, np.ndarray]:
    errs_t, errs_e = [], []
    only = np.array([m if m and "," not in m else "" for m in models] if models else [""] * t.size)
    for name in sorted(set(only) - {""}):
        held = only == name
        if held.all() or (~held).sum() < 3:
            continue
        fit = fit_operator_once(op, {n: v[~held] for n, v in cols.items()}, t[~held], e[~held])
        pt, pe = fit.cost(**{n: v[held] for n, v in cols.items()})
        errs_t.append(_rel(pt, t[held]))
        errs_e.append(_rel(pe, e[held]))
    return (np.concatenate(errs_t) if errs_t else np.array([]), np.concatenate(errs_e) if errs_e else np.array([]))


def expected_experts(n_experts: Any, top_k: Any, tokens: Any) -> Any:
    """Distinct experts `tokens` tokens touch under uniform routing: `ModelSpec.expected_experts_touched`'s formula.

    Here for raw points, which carry the MoE shape but no ModelSpec.
    """
    n = np.asarray(n_experts, dtype=np.float64)
    return n * (1.0 - (1.0 - np.asarray(top_k, dtype=np.float64) / n) ** np.asarray(tokens, dtype=np.float64))


def point_terms(op: str, params: Mapping[str, int], flops: float, bytes_moved: float) -> dict[str, float]:
    """The TERMS values of one raw point from its shape parameters and physical size."""
    terms = {"bytes": float(bytes_moved), "flops": float(flops)}
    if op == "moe":
        terms["experts"] = float(expected_experts(params["experts"], params["top_k"], params["tokens"]))
    if op == "sample":
        terms["row_tokens"] = float(params["vocab"])
    return {n: terms[n] for n in TERMS[op]}


def fit_operators(rows: Sequence[Mapping[str, Any]]) -> dict[str, OperatorFit]:
    """Fit every class present in raw operator rows.

    Args:
        rows: dicts with `op`, `params` (shape by name), `flops`, `bytes_moved`, `gpu_time_s`, `energy_j`, `models`.

    Returns:
        The fit per class, in TERMS order.
    """
    fits = {}
    for op in TERMS:
        mine = [r for r in rows if r["op"] == op]
        if not mine:
            continue
        per = [point_terms(op, r["params"], r["flops"], r["bytes_moved"]) for r in mine]
        terms = {n: [p[n] for p in per] for n in TERMS[op]}
        fits[op] = fit_operator(op, terms, [r["gpu_time_s"] for r in mine], [r["energy_j"] for r in mine],
                                [str(r.get("models") or "") for r in mine])
    return fits
