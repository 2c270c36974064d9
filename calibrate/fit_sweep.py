"""Sweep rows to a profile: aggregate the repeats of each grid point, fit the latency and energy curves, build it.

The curves' form and the least-squares fit live in `cost_form.py` and `fit.py`; this module picks the points, their
features and knots, and assembles the `GPUProfile`. Torch-free, so `profile refit` works on any machine.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from tokenjoule.calibrate.cost_form import FEATURES, REGIME, DecodeSplitRule, shape_features
from tokenjoule.calibrate.fit import choose_knots, fit_curve
from tokenjoule.calibrate.profile import GPUProfile, HostBand, HostOverhead
from tokenjoule.calibrate.sweep.generate import derive_fit_rows, warm_rows
from tokenjoule.calibrate.sweep.iterations import shape_from_row
from tokenjoule.kernels.shape import MAX_SPLITS, TARGET_PROGRAMS
from tokenjoule.kernels.spec import ModelSpec


def aggregate_points(rows: Sequence[dict[str, Any]], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """One record per ok point of `kinds`: median latency and energy over repeats, and their relative spread."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and row["kind"] in kinds:
            groups[row["point_id"]].append(row)
    out = []
    for point_id, group in groups.items():
        times = [r["step_time_s"] for r in group]
        energies = [r["energy_per_step_j"] for r in group if r["energy_per_step_j"] is not None]
        t_med = statistics.median(times)
        e_med = statistics.median(energies) if energies else None
        out.append({"point_id": point_id, "kind": group[0]["kind"], "shape": shape_from_row(group[0]),
                    "time_s": t_med, "energy_j": e_med, "time_spread": (max(times) - min(times)) / t_med,
                    "energy_spread": (max(energies) - min(energies)) / e_med if e_med else None})
    return out


def _columns(points: list[dict[str, Any]], key: str,
             rule: DecodeSplitRule | None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    feats = [shape_features(p["shape"], rule) for p in points]
    x = np.array([p["shape"].new_tokens for p in points], dtype=np.float64)
    names = (*FEATURES, REGIME)
    if not any(p["shape"].ragged_decode for p in points):
        # only ragged batches tell the longest context from the summed one; a grid without them leaves it unfitted
        names = tuple(n for n in names if n != "decode_tail_ctx_tokens")
    return x, {f: np.array([d[f] for d in feats]) for f in names}, np.array([p[key] for p in points], float)


def fit_rows(rows: Sequence[dict[str, Any]], folds: int = 5, rule: DecodeSplitRule | None = None) -> dict[str, Any]:
    """Fit latency and energy curves to raw sweep rows (prefill, decode and mixed points alike).

    `rule` is the engine's decode split rule, which prices the longest decode context (see `DecodeSplitRule`).

    Returns:
        {"latency": CostCurve, "energy": CostCurve, "fit_errors": {...}, "idle_power_w": float}.
    """
    rows = derive_fit_rows(rows)  # raw generate() rows -> the prefill/decode rows they imply; other rows as they are
    fit_points = aggregate_points(rows, ("prefill", "decode", "mixed"))
    if len(fit_points) < 4:
        raise ValueError(f"only {len(fit_points)} measured points; a fit needs >= 4")
    if any(p["energy_j"] is None for p in fit_points):
        raise ValueError("some points lack energy (no energy counter?); a profile needs energy for every point")
    decode_x = [p["shape"].new_tokens for p in fit_points if not p["shape"].prefill]
    prefill_x = [p["shape"].new_tokens for p in fit_points if p["shape"].prefill]
    # One curve per regime (decode-only, with prefill) when both were measured; see calibrate/profile.py.
    two_regimes = len(decode_x) >= 2 and len(prefill_x) >= 2
    knots = choose_knots(decode_x if two_regimes else decode_x + prefill_x)
    prefill_knots = choose_knots(prefill_x) if two_regimes else ()
    is_mixed = [p["kind"] == "mixed" for p in fit_points]
    out: dict[str, Any] = {"fit_errors": {}}
    for name, key, unit in (("latency", "time_s", "s"), ("energy", "energy_j", "J")):
        x, feats, y = _columns(fit_points, key, rule)
        curve, stats = fit_curve(x, feats, y, knots, unit, folds=folds, mixed_mask=is_mixed,
                                 prefill_knots=prefill_knots)
        out[name] = curve
        out["fit_errors"][name] = stats.to_dict()
    spreads = [p["time_spread"] for p in fit_points]
    e_spreads = [p["energy_spread"] for p in fit_points if p["energy_spread"] is not None]
    bounds = [r["error_bound"] for r in rows if r["status"] == "ok" and r["error_bound"] is not None]
    out["fit_errors"]["repeats"] = {"time_spread_median": float(np.median(spreads)),
                                    "energy_spread_median": float(np.median(e_spreads)) if e_spreads else None,
                                    "energy_error_bound_max": float(max(bounds)) if bounds else None}
    out["idle_power_w"] = idle_power(rows)
    return out


def idle_power(rows: Sequence[dict[str, Any]]) -> float:
    """Median idle power (W) of a sweep's idle windows; ValueError when it has none."""
    idle = [r["power_w"] for r in rows if r["kind"] == "idle" and r["power_w"] is not None]
    if not idle:
        raise ValueError("the sweep has no idle-power measurement")
    return float(statistics.median(idle))


MIN_BAND_WINDOWS = 10  # fewer repeated windows than this give no band: their percentiles would be two or three windows


def host_band(rows: Sequence[dict[str, Any]]) -> HostBand | None:
    """The p10-p90 spread of the sweep's repeated windows around their point's median (`HostBand`), or None.

    Every ok window of a point measured more than once counts (idle windows aside), as the raw file holds it (a
    generate() call is one window): the spread is the host-speed phases the calibration itself ran through. Cold
    generate() windows (`generate.warm_rows`) are left out, as the fit leaves them out.
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in warm_rows(rows):
        if row["status"] == "ok" and row["kind"] != "idle" and row["energy_per_step_j"] is not None:
            groups[row["point_id"]].append(row)
    repeated = [g for g in groups.values() if len(g) > 1]
    time_r, energy_r = [], []
    for group in repeated:
        t_med = statistics.median(r["step_time_s"] for r in group)
        e_med = statistics.median(r["energy_per_step_j"] for r in group)
        time_r += [r["step_time_s"] / t_med for r in group]
        energy_r += [r["energy_per_step_j"] / e_med for r in group]
    if len(time_r) < MIN_BAND_WINDOWS:
        return None
    t10, t90 = np.percentile(time_r, [10, 90])
    e10, e90 = np.percentile(energy_r, [10, 90])
    return HostBand(float(min(t10, 1.0)), float(max(t90, 1.0)), float(min(e10, 1.0)), float(max(e90, 1.0)),
                    len(time_r), len(repeated))


def build_profile(rows: Sequence[dict[str, Any]], *, spec: ModelSpec, engine: str, mode: str, tp: int,
                  kv_capacity_tokens: int, gpu: dict[str, Any], host: dict[str, Any], software: dict[str, Any],
                  method: dict[str, Any], raw_path: str | None, notes: str = "", folds: int = 5,
                  host_overhead: HostOverhead | None = None,
                  decode_split_rule: DecodeSplitRule | None = None) -> GPUProfile:
    """Fit the rows and assemble the GPUProfile (dated now, UTC)."""
    fitted = fit_rows(rows, folds=folds, rule=decode_split_rule)
    launch_bound = engine == "hf" or mode == "eager"  # as GPUProfile.launch_bound
    return GPUProfile(gpu=gpu, host=host, software=software, method=method,
                      date=datetime.now(timezone.utc).isoformat(timespec="seconds"), engine=engine, mode=mode,
                      model=spec, tp=tp, idle_power_w=fitted["idle_power_w"], kv_capacity_tokens=kv_capacity_tokens,
                      latency=fitted["latency"], energy=fitted["energy"], fit_errors=fitted["fit_errors"],
                      raw_path=raw_path, notes=notes, host_overhead=host_overhead,
                      decode_split_rule=decode_split_rule, host_band=host_band(rows) if launch_bound else None)


def tokenjoule_split_rule(spec: ModelSpec, tp: int) -> DecodeSplitRule:
    """The tokenjoule decode kernel's split rule for `spec` with its KV heads over `tp` GPUs."""
    return DecodeSplitRule(TARGET_PROGRAMS, MAX_SPLITS, max(1, spec.n_kv_heads // tp))
