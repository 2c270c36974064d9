"""Fit a GPU profile's whole-iteration overheads (`IterationOverheads`) on measured iterations of one or more models.

The operator fits price the GPU work an iteration's swept operators do; measured iterations also hold the engine's
host time and the gaps between kernels. `fit_overheads` fits the physical terms `calibrate/compose.py` adds, each on
the points where it shows, in steps that each solve a small problem exactly:

1. eager points (any prefill; in eager mode every kind), of the quick grids and of the warm-up replays: time =
   max(GPU time, launches x host seconds per launch) + f x min(the two), both fitted together: at each launch cost
   of a log grid (then a finer one around its best), the exposed fraction f (`host_exposed_fraction`) with the
   least median |log(predicted / measured)| over all eager points (a grid over [0, 1]; time is linear in f, so no
   recomposition), and the launch cost whose host-bound points, those whose composed GPU time is under
   `HOST_BOUND_FRACTION` of the measured time, have the least median |log ratio| with it (where the GPU time
   dominates, the host term cannot show and the operator fits' own error would pull it);
2. decode-only points of the quick grids and the ragged decode iterations of the warm-up replays (contexts of
   different lengths): measured - composed time = gap x layers + host x sequences + tail x layers x the longest
   program's context tokens beyond an average one (`cost_form.tail_ctx_tokens` with the engine's split rule), one
   non-negative least squares on relative error (`graph_gap_s_per_layer`, `decode_host_s_per_seq`,
   `decode_tail_s_per_token`); in eager mode (decode launched from Python, priced with step 1's terms) the tail
   alone. The tail's energy is priced at decode attention's busy power, not fitted (the replays meter whole
   scenarios, not iterations);
3. energies: composed energy is linear in each power term (`graph_gap_power_w` on decode points,
   `host_wait_power_w` on eager points), a least squares on relative error, clipped to the physical range from the
   GPU's idle power to its power limit (quick-grid points only: replay iterations have no energy of their own;
   whole warm-up replays' energies would want ~280-300 W for both on the 7B-32B dense models, but that prices the
   1B and MoE models' replays 10-50% high, so the two stay fitted on the quick-grid points);
4. the serving loop's host time between iterations (optional): the warm-up replays' per-iteration host seconds
   (schedule and commit), binned and fitted as `a + b x sequences + p x prefill chunks`
   (`calibrate/sweep/host_cost.py`'s fit), the `serving_host_s_*` terms.

Torch-free. The points are `calibrate/compose_check.measured_points`' and `replay_iterations`' output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.cost_form import DecodeSplitRule, IterFeatures, tail_ctx_tokens
from tokenjoule.calibrate.gpu_profile import GPUOperatorProfile, IterationOverheads
from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.sweep.host_cost import binned_points, fit_host_overhead
from tokenjoule.kernels.shape import MAX_SPLITS, TARGET_PROGRAMS
from tokenjoule.kernels.spec import ModelSpec

# Host seconds per eager launch searched (log-spaced): from a bare launch to 1000x it, then a finer grid around the
# best of the coarse one (its neighbours' span, `FINE_STEPS` points).
LAUNCH_GRID_S = np.geomspace(1e-6, 1e-3, 61)
FINE_STEPS = 41
EXPOSED_GRID = np.linspace(0.0, 1.0, 201)
HOST_BOUND_FRACTION = 0.5
METHOD = ("fitted on measured whole iterations (calibrate/overhead_fit.py): host seconds per eager launch by the least "
          "median |log ratio| of host-bound eager points (composed GPU time < half the measured), and the exposed "
          "share of the shorter of host and GPU time by the least median |log ratio| of all eager points (quick "
          "grids and warm-up replays); decode gap per layer, per-sequence host time and tail seconds per token by one "
          "NNLS on relative error of decode-only quick-grid points and ragged decode iterations of warm-up replays; "
          "powers by least squares on relative energy error of quick-grid points, within [idle power, power limit]; "
          "serving-loop host time per iteration by NNLS on relative error of the warm-up replays' binned host "
          "seconds")


def _with(gpu: GPUOperatorProfile, **terms: float) -> GPUOperatorProfile:
    base = {"eager_host_s_per_launch": 0.0, "host_wait_power_w": 0.0, "graph_gap_s_per_layer": 0.0,
            "graph_gap_power_w": 0.0, "decode_host_s_per_seq": 0.0}
    return dataclasses.replace(gpu, overheads=IterationOverheads(**{**base, **terms}))


def _price(profile: GPUProfile, point: dict[str, Any]) -> tuple[float, float]:
    """(s, J) of one point: a quick-grid point by its IterationShape, a replay iteration by its features."""
    if "shape" in point:
        return profile.cost(point["shape"])
    rule = profile.decode_split_rule
    return profile.latency.table().iteration(point["features"], rule), profile.energy.table().iteration(
        point["features"], rule)


def _priced(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]],
            kinds: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(time_s, energy_j) of `gpu`'s composition at each measured point of the given kinds, all models."""
    out = []
    for spec, points in data:
        profile = compose_profile(gpu, spec)
        out += [_price(profile, p) for p in points if p["kind"] in kinds]
    arr = np.array(out, dtype=float).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _measured(data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]], kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Measured time and energy (NaN for a replay iteration, which has none), layers and decode sequences."""
    rows = [(p["time_s"], p.get("energy_j", np.nan), spec.n_layers, len(p["shape"].decode) if "shape" in p
             else p["features"].decode_seqs) for spec, points in data for p in points if p["kind"] in kinds]
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return {"time_s": arr[:, 0], "energy_j": arr[:, 1], "layers": arr[:, 2], "seqs": arr[:, 3]}


def _power(gpu: GPUOperatorProfile, base_e: np.ndarray, per_w: np.ndarray, measured_e: np.ndarray) -> float:
    """Least-squares power P in measured ~ base + P x per_w on relative error, within [idle power, power limit].

    Points without a measured energy (NaN) are left out.
    """
    ok = np.isfinite(measured_e)
    base_e, per_w, measured_e = base_e[ok], per_w[ok], measured_e[ok]
    a, b = per_w / measured_e, (measured_e - base_e) / measured_e
    power = a @ b / (a @ a) if a @ a > 0 else gpu.idle_power_w
    return float(np.clip(power, gpu.idle_power_w, float(gpu.gpu.get("power_limit_w") or np.inf)))


def _tail_tokens(data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]], kinds: tuple[str, ...]) -> np.ndarray:
    """Per point: layers x the longest decode program's context tokens beyond an average one (engine's splits)."""
    out = []
    for spec, points in data:
        rule = DecodeSplitRule(TARGET_PROGRAMS, MAX_SPLITS, spec.n_kv_heads)
        for p in points:
            if p["kind"] in kinds:
                f = IterFeatures.of_shape(p["shape"]) if "shape" in p else p["features"]
                out.append(tail_ctx_tokens(f.decode_max_ctx_tokens, f.decode_ctx_tokens, f.decode_seqs, rule)
                           * spec.n_layers)
    return np.array(out, dtype=float)


def _fit_decode(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]],
                ragged: Sequence[tuple[ModelSpec, list[dict[str, Any]]]] = (),
                eager_terms: dict[str, float] | None = None) -> dict[str, float]:
    """Decode gap, per-sequence host and tail terms on the quick grids' decode points and the ragged replay ones.

    With CUDA graphs all three by one NNLS; in eager mode (decode launched from Python, priced with `eager_terms`)
    the tail alone, the graph terms staying 0.
    """
    kinds = ("decode",)
    both = [*data, *[(spec, [{**p, "kind": "decode"} for p in points]) for spec, points in ragged]]
    m = _measured(both, kinds)
    if not len(m["time_s"]):
        return {}
    eager_terms = eager_terms or {}
    base_t, _ = _priced(_with(gpu, **eager_terms), both, kinds)
    columns = [m["layers"], m["seqs"]] if gpu.mode == "cudagraph" else []
    design = np.column_stack([*columns, _tail_tokens(both, kinds)]) / m["time_s"][:, None]
    coef, _ = nnls(design, (m["time_s"] - base_t) / m["time_s"])
    gap, per_seq = (float(coef[0]), float(coef[1])) if columns else (0.0, 0.0)
    terms = {**eager_terms, "graph_gap_s_per_layer": gap, "decode_host_s_per_seq": per_seq,
             "decode_tail_s_per_token": float(coef[-1])}
    _, e0 = _priced(_with(gpu, **terms), data, kinds)
    _, e1 = _priced(_with(gpu, **terms, graph_gap_power_w=1.0), data, kinds)
    return {**{k: v for k, v in terms.items() if k not in eager_terms},
            "graph_gap_power_w": _power(gpu, e0, e1 - e0, _measured(data, kinds)["energy_j"]) if columns
            else gpu.idle_power_w}


def _log_loss(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.median(np.abs(np.log(predicted / measured))))


def _best_exposed(t0: np.ndarray, t1: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """(f, loss): the exposed fraction with the least median |log ratio| of t0 + f (t1 - t0) to measured."""
    losses = [_log_loss(t0 + f * (t1 - t0), measured) for f in EXPOSED_GRID]
    i = int(np.argmin(losses))
    return float(EXPOSED_GRID[i]), losses[i]


def _fit_eager(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]]) -> dict[str, float]:
    kinds = ("prefill", "mixed", "decode") if gpu.mode == "eager" else ("prefill", "mixed")
    m = _measured(data, kinds)
    if not len(m["time_s"]):
        return {}
    measured = m["time_s"]
    host_bound = _priced(_with(gpu), data, kinds)[0] < HOST_BOUND_FRACTION * measured
    if not host_bound.any():
        return {}

    def solve(c: float) -> tuple[float, float]:
        """At launch cost c: the best exposed fraction on all points, and the host-bound points' loss with it."""
        t0 = _priced(_with(gpu, eager_host_s_per_launch=c), data, kinds)[0]
        t1 = _priced(_with(gpu, eager_host_s_per_launch=c, host_exposed_fraction=1.0), data, kinds)[0]
        f, _ = _best_exposed(t0, t1, measured)
        return f, _log_loss((t0 + f * (t1 - t0))[host_bound], measured[host_bound])

    coarse = [solve(c)[1] for c in LAUNCH_GRID_S]
    i = int(np.argmin(coarse))
    fine = np.geomspace(LAUNCH_GRID_S[max(i - 1, 0)], LAUNCH_GRID_S[min(i + 1, len(LAUNCH_GRID_S) - 1)], FINE_STEPS)
    solved = [solve(c) for c in fine]
    j = int(np.argmin([loss for _, loss in solved]))
    terms = {"eager_host_s_per_launch": float(fine[j]), "host_exposed_fraction": solved[j][0]}
    _, e0 = _priced(_with(gpu, **terms), data, kinds)
    _, e1 = _priced(_with(gpu, **terms, host_wait_power_w=1.0), data, kinds)
    return {**terms, "host_wait_power_w": _power(gpu, e0, e1 - e0, m["energy_j"])}


def _fit_serving_host(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The serving loop's host seconds per iteration, per sequence and per prefill chunk (none: not fitted)."""
    points = binned_points([{"seqs": r["features"].decode_seqs + r["features"].prefill_seqs,
                             "prefill_seqs": r["features"].prefill_seqs, "host_s": r["host_s"]} for r in rows])
    if len(points) < 3:
        return {}
    host = fit_host_overhead(points)
    return {"serving_host_s_per_iteration": host.per_iteration_s, "serving_host_s_per_seq": host.per_seq_s,
            "serving_host_s_per_prefill_seq": host.per_prefill_seq_s}


def fit_overheads(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]],
                  fitted_on: Sequence[str] = (),
                  ragged: Sequence[tuple[ModelSpec, list[dict[str, Any]]]] = (),
                  replays: Sequence[tuple[ModelSpec, list[dict[str, Any]]]] = ()) -> IterationOverheads:
    """The overhead terms, fitted on measured whole iterations of the given models.

    Args:
        gpu: the GPU profile (its operator fits and launch costs; its own overheads are ignored).
        data: (model, measured points) pairs; kinds "decode", "prefill" and "mixed".
        fitted_on: the measured files' names, stored as provenance.
        ragged: (model, `compose_check.ragged_decode_points`) pairs: they join the quick grids' decode points in
            step 2 (without them the tail term rests on the quick grids' ragged points alone).
        replays: (model, `compose_check.replay_iterations`) pairs: their eager iterations join the quick grids'
            in step 1, their host seconds fit the serving loop's host time (none: it stays 0).

    Returns:
        The fitted terms (a time without points to fit it on is 0, a power the idle power).
    """
    eager = [(spec, list(points) + [p for s, rows in replays if s == spec for p in rows]) for spec, points in data]
    eager += [(spec, rows) for spec, rows in replays if all(spec != s for s, _ in data)]
    terms = _fit_eager(gpu, eager)
    terms.update(_fit_decode(gpu, data, ragged, terms))
    terms.update(_fit_serving_host([r for _, rows in replays for r in rows]))
    return dataclasses.replace(_with(gpu, **terms).overheads, fitted_on=tuple(fitted_on), method=METHOD)
