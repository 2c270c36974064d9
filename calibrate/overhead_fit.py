"""Fit a GPU profile's whole-iteration overheads (`IterationOverheads`) on measured iterations of one or more models.

The operator fits price the GPU work an iteration's swept operators do; measured iterations also hold the engine's
host time and the gaps between kernels. `fit_overheads` fits the physical terms `calibrate/compose.py` adds, each on
the points where it shows, in steps that each solve a small problem exactly:

1. decode-only points (CUDA-graph replays): measured - composed time = gap x layers + host x sequences, a
   non-negative least squares on relative error (`graph_gap_s_per_layer`, `decode_host_s_per_seq`); with one
   model the layers are one number, so the gap is that model's constant per layer;
2. eager points (any prefill; in eager mode every kind), of the quick grids and of the warm-up replays: time =
   max(GPU time, launches x host seconds per launch) + f x min(the two). The launch cost is a 1-D search (log
   grid, then a finer one around its best) for the least median |log(predicted / measured)| over the host-bound
   points, those whose composed GPU time is under `HOST_BOUND_FRACTION` of the measured time (where the GPU time
   dominates, the host term cannot show and the operator fits' own error would pull it); the exposed fraction f
   (`host_exposed_fraction`) is then a 1-D grid search over [0, 1] for the least median |log ratio| over all eager
   points (time is linear in f, so no recomposition); the two are alternated `EAGER_ROUNDS` times;
3. ragged decode iterations (a replay's, contexts of different lengths; optional): measured - composed time =
   `decode_tail_s_per_token` x layers x the longest program's extra context tokens (`cost_form.tail_ctx_tokens` with
   the engine's split rule), a one-term least squares on relative error, clipped at 0; their energy is priced at
   decode attention's busy power, not fitted (the replays meter whole scenarios, not iterations);
4. energies: composed energy is linear in each power term (`graph_gap_power_w` on decode points,
   `host_wait_power_w` on eager points), a least squares on relative error, clipped to the physical range from the
   GPU's idle power to its power limit (quick-grid points only: replay iterations have no energy of their own);
5. the serving loop's host time between iterations (optional): the warm-up replays' per-iteration host seconds
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
from tokenjoule.calibrate.cost_form import tail_ctx_tokens
from tokenjoule.calibrate.gpu_profile import GPUOperatorProfile, IterationOverheads
from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.sweep.host_cost import binned_points, fit_host_overhead
from tokenjoule.kernels.spec import ModelSpec

# Host seconds per eager launch searched (log-spaced): from a bare launch to 1000x it, then a finer grid around the
# best of the coarse one (its neighbours' span, `FINE_STEPS` points).
LAUNCH_GRID_S = np.geomspace(1e-6, 1e-3, 61)
FINE_STEPS = 41
EXPOSED_GRID = np.linspace(0.0, 1.0, 201)
EAGER_ROUNDS = 3
HOST_BOUND_FRACTION = 0.5
METHOD = ("fitted on measured whole iterations (calibrate/overhead_fit.py): decode gap and per-sequence host time "
          "by NNLS on relative error of decode-only points; host seconds per eager launch by the least median "
          "|log ratio| of host-bound eager points (composed GPU time < half the measured), and the exposed share of "
          "the shorter of host and GPU time by the least median |log ratio| of all eager points (quick grids and "
          "warm-up replays); powers by least squares on relative energy error, within [idle power, power limit]; "
          "decode tail seconds per token by least squares on relative error of ragged decode iterations of warm-up "
          "replays; serving-loop host time per iteration by NNLS on relative error of the warm-up replays' binned "
          "host seconds")


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


def _fit_decode(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]]) -> dict[str, float]:
    m = _measured(data, ("decode",))
    if not len(m["time_s"]):
        return {}
    base_t, base_e = _priced(_with(gpu), data, ("decode",))
    design = np.column_stack([m["layers"], m["seqs"]]) / m["time_s"][:, None]
    (gap, per_seq), _ = nnls(design, (m["time_s"] - base_t) / m["time_s"])
    t0, e0 = _priced(_with(gpu, graph_gap_s_per_layer=gap, decode_host_s_per_seq=per_seq), data, ("decode",))
    _, e1 = _priced(_with(gpu, graph_gap_s_per_layer=gap, decode_host_s_per_seq=per_seq, graph_gap_power_w=1.0),
                    data, ("decode",))
    return {"graph_gap_s_per_layer": float(gap), "decode_host_s_per_seq": float(per_seq),
            "graph_gap_power_w": _power(gpu, e0, e1 - e0, m["energy_j"])}


def _log_loss(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(np.median(np.abs(np.log(predicted / measured))))


def _search_launch(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]],
                   kinds: tuple[str, ...], mask: np.ndarray, measured: np.ndarray, exposed: float) -> float:
    """Host seconds per launch with the least median |log ratio| on the masked points: a log grid, then a finer one."""
    def loss(c: float) -> float:
        t = _priced(_with(gpu, eager_host_s_per_launch=c, host_exposed_fraction=exposed), data, kinds)[0]
        return _log_loss(t[mask], measured[mask])

    coarse = [loss(c) for c in LAUNCH_GRID_S]
    i = int(np.argmin(coarse))
    lo, hi = LAUNCH_GRID_S[max(i - 1, 0)], LAUNCH_GRID_S[min(i + 1, len(LAUNCH_GRID_S) - 1)]
    fine = np.geomspace(lo, hi, FINE_STEPS)
    return float(fine[int(np.argmin([loss(c) for c in fine]))])


def _fit_eager(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]]) -> dict[str, float]:
    kinds = ("prefill", "mixed", "decode") if gpu.mode == "eager" else ("prefill", "mixed")
    m = _measured(data, kinds)
    if not len(m["time_s"]):
        return {}
    measured = m["time_s"]
    host_bound = _priced(_with(gpu), data, kinds)[0] < HOST_BOUND_FRACTION * measured
    if not host_bound.any():
        return {}
    launch, exposed = 0.0, 0.0
    for _ in range(EAGER_ROUNDS):
        launch = _search_launch(gpu, data, kinds, host_bound, measured, exposed)
        t0 = _priced(_with(gpu, eager_host_s_per_launch=launch), data, kinds)[0]
        t1 = _priced(_with(gpu, eager_host_s_per_launch=launch, host_exposed_fraction=1.0), data, kinds)[0]
        exposed = float(EXPOSED_GRID[int(np.argmin([_log_loss(t0 + f * (t1 - t0), measured) for f in EXPOSED_GRID]))])
    terms = {"eager_host_s_per_launch": launch, "host_exposed_fraction": exposed}
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


def _fit_tail(gpu: GPUOperatorProfile, ragged: Sequence[tuple[ModelSpec, list[dict[str, Any]]]]) -> dict[str, float]:
    rows = []
    for spec, points in ragged:
        profile = compose_profile(gpu, spec)
        table, rule = profile.latency.table(), profile.decode_split_rule
        for p in points:
            f = p["features"]
            tail = tail_ctx_tokens(f.decode_max_ctx_tokens, f.decode_ctx_tokens, f.decode_seqs, rule) * spec.n_layers
            rows.append((p["time_s"], table.iteration(f, rule), tail))
    if not rows:
        return {}
    measured, base, tail = np.array(rows, dtype=float).T
    a, b = tail / measured, (measured - base) / measured
    return {"decode_tail_s_per_token": float(max(0.0, a @ b / (a @ a))) if a @ a > 0 else 0.0}


def fit_overheads(gpu: GPUOperatorProfile, data: Sequence[tuple[ModelSpec, list[dict[str, Any]]]],
                  fitted_on: Sequence[str] = (),
                  ragged: Sequence[tuple[ModelSpec, list[dict[str, Any]]]] = (),
                  replays: Sequence[tuple[ModelSpec, list[dict[str, Any]]]] = ()) -> IterationOverheads:
    """The overhead terms, fitted on measured whole iterations of the given models.

    Args:
        gpu: the GPU profile (its operator fits and launch costs; its own overheads are ignored).
        data: (model, measured points) pairs; kinds "decode", "prefill" and "mixed".
        fitted_on: the measured files' names, stored as provenance.
        ragged: (model, `compose_check.ragged_decode_points`) pairs for the decode tail term (none: it stays 0).
        replays: (model, `compose_check.replay_iterations`) pairs: their eager iterations join the quick grids'
            in step 2, their host seconds fit the serving loop's host time (none: it stays 0).

    Returns:
        The fitted terms (a time without points to fit it on is 0, a power the idle power).
    """
    eager = [(spec, list(points) + [p for s, rows in replays if s == spec for p in rows]) for spec, points in data]
    eager += [(spec, rows) for spec, rows in replays if all(spec != s for s, _ in data)]
    terms = {**_fit_decode(gpu, data), **_fit_eager(gpu, eager),
             **_fit_serving_host([r for _, rows in replays for r in rows])}
    terms.update(_fit_tail(_with(gpu, **terms), ragged))
    return dataclasses.replace(_with(gpu, **terms).overheads, fitted_on=tuple(fitted_on), method=METHOD)
