"""Fit the profile's cost form to measured points: non-negative least squares on relative error, k-fold CV.

Pure: arrays in, a CostCurve plus error statistics out. scipy is imported here and nowhere else in tokenjoule.

The form (`calibrate/cost_form.py`, which also builds the design matrix) is linear in its parameters: the
piecewise-linear token curve is a sum of "hat" basis functions, one per knot, weighted by the curve's value at that
knot; the FEATURES enter linearly.
Dividing each row by its measured value makes least squares minimise relative error, so a 5 ms decode step
counts as much as a 500 ms prefill. Non-negativity (costs grow with work) keeps extrapolation sane.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from tokenjoule.calibrate.cost_form import FEATURES, REGIME, CostCurve, design_matrix

CANDIDATE_KNOTS = (1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


@dataclass(frozen=True, slots=True)
class FitStats:
    """Relative errors |predicted - measured| / measured of a fit.

    Attributes:
        n_points: points fitted.
        train_median: median error on the fitted points.
        train_p95: 95th percentile on the fitted points.
        cv_median: median error on held-out points (k-fold cross-validation).
        cv_p95: 95th percentile on held-out points.
        folds: folds used.
        mixed_median: median held-out (cross-validated) error on the mixed iterations, or None without them.
        mixed_p95: 95th percentile of the same, or None.
        n_mixed: mixed iterations among the points.
    """

    n_points: int
    train_median: float
    train_p95: float
    cv_median: float
    cv_p95: float
    folds: int
    mixed_median: float | None = None
    mixed_p95: float | None = None
    n_mixed: int = 0

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain dict for the profile's `fit_errors`."""
        return {"n_points": self.n_points, "train_median": self.train_median, "train_p95": self.train_p95,
                "cv_median": self.cv_median, "cv_p95": self.cv_p95, "folds": self.folds,
                "mixed_median": self.mixed_median, "mixed_p95": self.mixed_p95, "n_mixed": self.n_mixed}


def choose_knots(new_tokens: Sequence[float], candidates: Sequence[int] = CANDIDATE_KNOTS,
                 min_support: int = 2) -> tuple[float, ...]:
    """Knots covering the data: its smallest and largest `new_tokens`, plus well-supported candidates between.

    A candidate strictly inside the data's range is kept when at least `min_support` points lie within a factor
    sqrt(2) of it, so each knot stays pinned by data even when cross-validation holds one point out.
    """
    x = np.asarray(new_tokens, dtype=np.float64)
    if x.size == 0:
        raise ValueError("choose_knots needs at least one point")
    lo, hi = float(x.min()), float(x.max())
    near = [float(c) for c in candidates if lo < c < hi and np.sum(np.abs(np.log2(x / c)) <= 0.5) >= min_support]
    return tuple([lo, *near, hi]) if hi > lo else (lo, lo + 1.0)


def solve_relative(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """NNLS of a @ p ~= y in relative terms, with columns scaled to unit max so tiny features are not ignored."""
    weighted = a / y[:, None]
    scale = np.abs(weighted).max(axis=0)
    scale[scale == 0] = 1.0
    params, _ = nnls(weighted / scale, np.ones_like(y), maxiter=50 * a.shape[1])
    return params / scale


def _curve(params: np.ndarray, knots: Sequence[float], prefill_knots: Sequence[float], unit: str,
           fitted: Collection[str]) -> CostCurve:
    n, m = len(knots), len(prefill_knots)
    coef = {name: float(params[n + m + i]) for i, name in enumerate(FEATURES) if name in fitted}
    return CostCurve(tuple(float(k) for k in knots), tuple(float(v) for v in params[:n]), coef, unit,
                     tuple(float(k) for k in prefill_knots), tuple(float(v) for v in params[n:n + m]))


def relative_errors(curve: CostCurve, new_tokens: np.ndarray, features: Mapping[str, np.ndarray],
                    y: np.ndarray) -> np.ndarray:
    """|curve - y| / y per point."""
    y = np.asarray(y, dtype=np.float64)
    return np.abs(curve.evaluate(new_tokens, **features) - y) / y


def _fold_knots(knots: Sequence[float], x_train: np.ndarray) -> tuple[float, ...]:
    """The knots a fold can pin: those inside its training range, with the range's ends added where one was cut.

    A knot beyond every training point has no data under it, so a fit would leave its value at zero; the fitted
    curve extrapolates the last supported slope instead, as the full fit does past its last knot.
    """
    if len(knots) < 2 or len(np.unique(x_train)) < 2:
        return tuple(knots)
    lo, hi = float(x_train.min()), float(x_train.max())
    inside = [k for k in knots if lo <= k <= hi]
    kept = ([] if inside and inside[0] == knots[0] else [lo]) + inside + ([] if inside and inside[-1] == knots[-1]
                                                                          else [hi])
    return tuple(sorted(set(kept)))


def _kfold_errors(x: np.ndarray, cols: Mapping[str, np.ndarray], y: np.ndarray, knots: Sequence[float],
                  prefill_knots: Sequence[float], folds: int, seed: int) -> np.ndarray:
    """Held-out relative errors; each fold places its knots where its own training points are (`_fold_knots`)."""
    order = np.random.default_rng(seed).permutation(len(y))
    has_prefill = np.asarray(cols.get(REGIME, np.zeros_like(x))) > 0
    errors = np.empty(len(y))
    for held in np.array_split(order, folds):
        train = np.setdiff1d(order, held)
        if len(prefill_knots):
            k_dec = _fold_knots(knots, x[train][~has_prefill[train]])
            k_pre = _fold_knots(prefill_knots, x[train][has_prefill[train]])
        else:
            k_dec, k_pre = _fold_knots(knots, x[train]), ()

        def rows(idx: np.ndarray) -> np.ndarray:
            return design_matrix(x[idx], {n: v[idx] for n, v in cols.items()}, k_dec, k_pre)  # noqa: B023

        params = solve_relative(rows(train), y[train])
        errors[held] = np.abs(rows(held) @ params - y[held]) / y[held]
    return errors


def fit_curve(new_tokens: Sequence[float], features: Mapping[str, Sequence[float]], y: Sequence[float],
              knots: Sequence[float], unit: str, folds: int = 5, seed: int = 0,
              mixed_mask: Sequence[bool] | None = None,
              prefill_knots: Sequence[float] = ()) -> tuple[CostCurve, FitStats]:
    """Fit a CostCurve to measured points and report its errors.

    Mixed iterations (prefill chunks beside decodes) are fitted like any other point: a serving loop runs mostly
    those, and they cost more than their parts measured alone (the decodes leave the CUDA graph). Their own
    cross-validated error is reported apart, so the file still says how well the form composes.

    Args:
        new_tokens: tokens pushed through the weights per iteration, one per point.
        features: FEATURES columns by name, plus the regime indicator "has_prefill". A missing feature is zero and
            gets no coefficient in the curve (the data cannot tell it).
        y: measured latency (s) or energy (J) per iteration; all > 0.
        knots: the curve's knots in `new_tokens` (see `choose_knots`).
        unit: "s" or "J".
        folds: cross-validation folds (at most one per point).
        seed: shuffles the folds.
        mixed_mask: True for the points that are mixed iterations (their CV errors are reported apart).
        prefill_knots: knots of a separate curve for iterations with prefill; empty fits one curve for all.

    Returns:
        (curve fitted on all points, FitStats).
    """
    x = np.asarray(new_tokens, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    if x.shape != target.shape or x.ndim != 1:
        raise ValueError(f"new_tokens {x.shape} and y {target.shape} must be 1-D and of equal length")
    if target.size < 2 or np.any(~np.isfinite(target)) or np.any(target <= 0):
        raise ValueError("y must hold >= 2 finite values, all > 0")
    unknown = sorted(set(features) - set(FEATURES) - {REGIME})
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown}; known: {list(FEATURES)}")
    mixed = np.zeros(x.shape, dtype=bool) if mixed_mask is None else np.asarray(mixed_mask, dtype=bool)
    if mixed.shape != x.shape:
        raise ValueError(f"mixed_mask {mixed.shape} must match new_tokens {x.shape}")
    cols = {name: np.asarray(v, dtype=np.float64) for name, v in features.items()}
    a = design_matrix(x, cols, knots, prefill_knots)
    curve = _curve(solve_relative(a, target), knots, prefill_knots, unit, cols)
    train = relative_errors(curve, x, cols, target)
    k = max(2, min(folds, target.size))
    cv = _kfold_errors(x, cols, target, knots, prefill_knots, k, seed)
    n_mixed = int(mixed.sum())
    return curve, FitStats(int(target.size), float(np.median(train)), float(np.percentile(train, 95)),
                           float(np.median(cv)), float(np.percentile(cv, 95)), k,
                           float(np.median(cv[mixed])) if n_mixed else None,
                           float(np.percentile(cv[mixed], 95)) if n_mixed else None, n_mixed)
