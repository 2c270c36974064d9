"""Carry a profile to another machine of the same GPU type with a short re-measurement there.

Two H200s here drew up to 7% different energy for the same replay, and hosts differ in CPU speed (validation/
README.md). A full sweep takes minutes; this keeps the base profile's shape (its fitted curves) and takes from the
new machine what differs between machines: idle power, the serving loop's host overhead, and scales for the
latency and energy curves (one for decode-only iterations, one for those with prefill), each the median ratio of
measured to predicted cost over a few grid points (`SHORT_GRID`) measured there: `tokenjoule calibrate --short-from`.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from tokenjoule.calibrate.cost_form import CostCurve, ProfileError
from tokenjoule.calibrate.fit_sweep import aggregate_points, idle_power
from tokenjoule.calibrate.measure.machine import gpu_uuids, host_info, software_info
from tokenjoule.calibrate.profile import GPUProfile, HostOverhead
from tokenjoule.calibrate.sweep.grid import GridConfig, grid_points
from tokenjoule.kernels.spec import ModelSpec

# A few points per regime the curves cover: small and large decode batches, a ragged decode, prefills, a mixed
# step (9 points against the full grid's 133).
SHORT_GRID = GridConfig(prefill_batches=(1, 4), prefill_lengths_tokens=(1024, 2048), prefill_chunks=(),
                        decode_batches=(1, 64, 256), decode_contexts_tokens=(512,),
                        decode_ragged=((128, 1, 8192, 256),), mixed_chunks=((2048, 0),), mixed_decodes=((64, 2048),),
                        settle_s=10.0)
SHORT_POINTS = tuple(p.point_id for p in grid_points(SHORT_GRID, 1 << 20, 1 << 30, 1 << 16))


def scaled(curve: CostCurve, decode: float, prefill: float) -> CostCurve:
    """The curve with its decode-only regime (knots and decode terms) times `decode`, the rest times `prefill`.

    A curve without a prefill regime of its own serves both, and takes `decode`.
    """
    def factor(name: str) -> float:
        return decode if name.startswith("decode_") or not curve.prefill_knots_tokens else prefill

    return dataclasses.replace(curve, knot_values=tuple(v * decode for v in curve.knot_values),
                               prefill_knot_values=tuple(v * prefill for v in curve.prefill_knot_values),
                               coef={k: v * factor(k) for k, v in curve.coef.items()})


def _ratios(base: GPUProfile, points: Sequence[dict[str, Any]], key: str) -> tuple[float, float]:
    """Median measured / predicted over the decode-only points, and over the rest (one median if a kind is absent)."""
    curve = base.latency if key == "time_s" else base.energy
    pairs = [(bool(p["shape"].prefill), p[key] / curve.of_shape(p["shape"], base.decode_split_rule)) for p in points]
    decode = [r for prefill, r in pairs if not prefill]
    rest = [r for prefill, r in pairs if prefill]
    overall = statistics.median(decode + rest)
    return (statistics.median(decode) if decode else overall, statistics.median(rest) if rest else overall)


def short_recalibration(base: GPUProfile, points: Sequence[dict[str, Any]], idle_power_w: float,
                        host_overhead: HostOverhead | None, note: str) -> GPUProfile:
    """`base` rescaled to a new machine from a few points measured there.

    Decode-only iterations and iterations with prefill get a scale each: two GPUs of one type here differed by 13%
    in decode energy and 2% in prefill energy, where both run at the 700 W power limit (validation/README.md).

    Args:
        base: the profile to carry.
        points: measured points on the new machine, {"shape": IterationShape, "time_s", "energy_j"} each.
        idle_power_w: idle power measured there.
        host_overhead: host overhead measured there (None keeps the base's).
        note: where the measurements came from (appended to the notes).
    """
    if not points:
        raise ValueError("a short re-calibration needs at least one measured point")
    (lat_d, lat_p), (en_d, en_p) = _ratios(base, points, "time_s"), _ratios(base, points, "energy_j")
    notes = (f"{base.notes}; short re-calibration ({note}): latency x{lat_d:.4f} decode / x{lat_p:.4f} prefill, "
             f"energy x{en_d:.4f} / x{en_p:.4f}, idle power and host overhead re-measured")
    carried = dataclasses.replace(base, latency=scaled(base.latency, lat_d, lat_p),
                                  energy=scaled(base.energy, en_d, en_p), idle_power_w=idle_power_w,
                                  host_overhead=host_overhead or base.host_overhead, notes=notes)
    # the base's cross-validated errors still describe the curves' shape; these say how the re-scaled curves meet
    # the points measured here
    residual = {name: float(statistics.median(
        abs(curve.of_shape(p["shape"], base.decode_split_rule) / p[key] - 1) for p in points))
        for name, curve, key in (("latency", carried.latency, "time_s"), ("energy", carried.energy, "energy_j"))}
    fit_errors = {**base.fit_errors, "short_recalibration": {"points": len(points), **{
        f"{k}_median_abs_error": v for k, v in residual.items()}}}
    return dataclasses.replace(carried, fit_errors=fit_errors)


def check_base(base: GPUProfile, spec: ModelSpec, engine: str, mode: str, tp: int) -> None:
    """ProfileError unless `base` is of the same model, engine, mode and TP degree, and itself fully calibrated."""
    mine = (spec.name, engine, mode, tp)
    theirs = (base.model.name, base.engine, base.mode, base.tp)
    if mine != theirs:
        raise ProfileError(f"base profile is {theirs[0]} / {theirs[1]} / {theirs[2]} / tp{theirs[3]}, this "
                           f"calibration is {mine[0]} / {mine[1]} / {mine[2]} / tp{mine[3]}: a short "
                           "re-calibration keeps all four")
    if base.method.get("short_recalibration_of"):
        raise ProfileError("base profile is itself a short re-calibration; start from a fully calibrated profile")


def recalibrated_profile(base: GPUProfile, rows: list[dict[str, Any]], host: HostOverhead | None, *,
                         gpu: dict[str, Any], method: dict[str, Any], raw_file: str,
                         kv_capacity_tokens: int) -> GPUProfile:
    """`base` re-scaled by this machine's short sweep `rows`, with this machine's metadata and raw file name.

    Args:
        base: the profile to carry (checked with `check_base`).
        rows: the short sweep's raw rows.
        host: host overhead measured here (None keeps the base's).
        gpu: `machine.gpu_info` of the GPUs measured here.
        method: this calibration's method block; `short_recalibration_of` (the base's identity) is added.
        raw_file: the raw Parquet's file name, beside the profile.
        kv_capacity_tokens: the engine's KV capacity here.
    """
    points = aggregate_points(rows, ("prefill", "decode", "mixed"))
    carried = short_recalibration(base, points, idle_power(rows), host, f"{len(points)} points on this machine")
    method = {**method, "short_recalibration_of": {
        "date": base.date, "gpu": base.gpu.get("name"), "gpu_uuids": list(gpu_uuids(base.gpu)),
        "content_sha256": base.content_sha256}}
    return dataclasses.replace(carried, gpu=gpu, host=host_info(), software=software_info(), method=method,
                               date=datetime.now(timezone.utc).isoformat(timespec="seconds"), raw_path=raw_file,
                               kv_capacity_tokens=kv_capacity_tokens)
