"""Carry a profile to another machine of the same GPU type with a short re-measurement there.

Two H200s here drew up to 7% different energy for the same replay, and hosts differ in CPU speed (validation/
README.md). A full sweep takes minutes; this keeps the base profile's shape (its fitted curves) and takes from the
new machine what differs between machines: idle power, the serving loop's host overhead, and scales for the
latency and energy curves (one for decode-only iterations, one for those with prefill), each the median ratio of
the cost measured there to the cost the base machine measured at the same grid point, over a few grid points
(`SHORT_GRID`): `tokenjoule calibrate --short-from`.

The ratio is taken against the base's own measurements, not its fitted curve: a curve misses single points by a
few percent, and at `SHORT_GRID`'s points every cudagraph H200 curve here over-predicted its own measurements
(measured/predicted energy, median 0.975-0.986 over the prefill points and 0.981-0.999 over the decode points,
against 1.000-1.005 over the whole grid), so measured/predicted took that residual for a machine difference and
carried profiles about 1% low (validation/: signed energy error of the carry-over pairs -1.9% median, -0.9% now).
A point the base did not measure (or a base without its raw file) falls back to measured/predicted.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tokenjoule.calibrate.cost_form import CostCurve, ProfileError
from tokenjoule.calibrate.fit_sweep import aggregate_points, idle_power
from tokenjoule.calibrate.measure.machine import gpu_uuids, host_info, software_info
from tokenjoule.calibrate.profile import GPUProfile, HostOverhead
from tokenjoule.calibrate.sweep.generate import GenerateGrid, derive_fit_rows
from tokenjoule.calibrate.sweep.grid import GridConfig, grid_points
from tokenjoule.calibrate.sweep.iterations import read_rows
from tokenjoule.kernels.spec import ModelSpec

# A few points per regime the curves cover: small and large decode batches, a ragged decode, prefills, a mixed
# step (9 points against the full grid's 133).
SHORT_GRID = GridConfig(prefill_batches=(1, 4), prefill_lengths_tokens=(1024, 2048), prefill_chunks=(),
                        decode_batches=(1, 64, 256), decode_contexts_tokens=(512,),
                        decode_ragged=((128, 1, 8192, 256),), mixed_chunks=((2048, 0),), mixed_decodes=((64, 2048),),
                        settle_s=10.0)
SHORT_POINTS = tuple(p.point_id for p in grid_points(SHORT_GRID, 1 << 20, 1 << 30, 1 << 16))
# The host check of Hugging Face generate(): four (B, L) points of the full generate() grid, both calls each, two
# interleaved windows, no thermal settling (generate() is launch-bound: the host, not the GPU's temperature, sets its
# pace): about half a minute on an H200, where the full sweep takes four. The budget is a cap that lets each point
# pass the planner's per-point share (`generate.POINT_SHARE`); four points do not spend it.
SHORT_GENERATE_GRID = GenerateGrid(prefill_batches=(1, 8), prefill_lengths_tokens=(128, 512), repeats=2,
                                   extra_repeats=0, idle_s=2.0, settle_s=0.0, budget_s=300.0)


def scaled(curve: CostCurve, decode: float, prefill: float) -> CostCurve:
    """The curve with its decode-only regime (knots and decode terms) times `decode`, the rest times `prefill`.

    A curve without a prefill regime of its own serves both, and takes `decode`.
    """
    def factor(name: str) -> float:
        return decode if name.startswith("decode_") or not curve.prefill_knots_tokens else prefill

    return dataclasses.replace(curve, knot_values=tuple(v * decode for v in curve.knot_values),
                               prefill_knot_values=tuple(v * prefill for v in curve.prefill_knot_values),
                               coef={k: v * factor(k) for k, v in curve.coef.items()})


def _ratios(base: GPUProfile, points: Sequence[dict[str, Any]], key: str,
            base_points: Mapping[str, dict[str, Any]]) -> tuple[float, float]:
    """Median measured here / on the base machine over the decode-only points, and over the rest.

    One median serves both if a kind is absent; a point missing from `base_points` is divided by the base curve's
    prediction instead.
    """
    curve = base.latency if key == "time_s" else base.energy

    def reference(p: dict[str, Any]) -> float:
        mine = base_points.get(p["point_id"]) if "point_id" in p else None
        return mine[key] if mine and mine.get(key) else curve.of_shape(p["shape"], base.decode_split_rule)

    pairs = [(bool(p["shape"].prefill), p[key] / reference(p)) for p in points]
    decode = [r for prefill, r in pairs if not prefill]
    rest = [r for prefill, r in pairs if prefill]
    overall = statistics.median(decode + rest)
    return (statistics.median(decode) if decode else overall, statistics.median(rest) if rest else overall)


def short_recalibration(base: GPUProfile, points: Sequence[dict[str, Any]], idle_power_w: float,
                        host_overhead: HostOverhead | None, note: str,
                        base_points: Sequence[dict[str, Any]] = ()) -> GPUProfile:
    """`base` rescaled to a new machine from a few points measured there.

    Decode-only iterations and iterations with prefill get a scale each: two GPUs of one type here differed by 13%
    in decode energy and 2% in prefill energy, where both run at the 700 W power limit (validation/README.md).

    Args:
        base: the profile to carry.
        points: measured points on the new machine, {"shape": IterationShape, "time_s", "energy_j"} each.
        idle_power_w: idle power measured there.
        host_overhead: host overhead measured there (None keeps the base's).
        note: where the measurements came from (appended to the notes).
        base_points: the base machine's own measured points (`aggregate_points` of its raw rows), matched to
            `points` by point_id; empty falls back to the base curve's predictions (biased, see the module doc).
    """
    if not points:
        raise ValueError("a short re-calibration needs at least one measured point")
    mine = {p["point_id"]: p for p in base_points}
    (lat_d, lat_p), (en_d, en_p) = _ratios(base, points, "time_s", mine), _ratios(base, points, "energy_j", mine)
    matched = sum(p.get("point_id") in mine for p in points)
    against = (f"against the base's measurements at {matched} of {len(points)} points" if matched
               else "against its curves")
    notes = (f"{base.notes}; short re-calibration ({note}, {against}): latency x{lat_d:.4f} decode / "
             f"x{lat_p:.4f} prefill, energy x{en_d:.4f} / x{en_p:.4f}, idle power and host overhead re-measured")
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


def base_rows(base: GPUProfile, path: str | Path) -> list[dict[str, Any]]:
    """The raw rows of `base` (loaded from `path`): its `raw_path` beside it; [] when it has none there."""
    return read_rows(Path(path).parent / base.raw_path) if base.raw_path else []


def recalibrated_profile(base: GPUProfile, rows: list[dict[str, Any]], host: HostOverhead | None, *,
                         gpu: dict[str, Any], method: dict[str, Any], raw_file: str,
                         kv_capacity_tokens: int, base_rows: Sequence[dict[str, Any]] = ()) -> GPUProfile:
    """`base` re-scaled by this machine's short sweep `rows`, with this machine's metadata and raw file name.

    Args:
        base: the profile to carry (checked with `check_base`).
        rows: the short sweep's raw rows.
        host: host overhead measured here (None keeps the base's).
        gpu: `machine.gpu_info` of the GPUs measured here.
        method: this calibration's method block; `short_recalibration_of` (the base's identity) is added.
        raw_file: the raw Parquet's file name, beside the profile.
        kv_capacity_tokens: the engine's KV capacity here.
        base_rows: the base's raw rows (its `raw_path`), to take the ratios against; empty: against its curves.
    """
    kinds = ("prefill", "decode", "mixed")
    points = aggregate_points(derive_fit_rows(rows), kinds)  # generate() calls -> their prefill and decode points
    carried = short_recalibration(base, points, idle_power(rows), host, f"{len(points)} points on this machine",
                                  aggregate_points(derive_fit_rows(base_rows), kinds))
    method = {**method, "short_recalibration_of": {
        "date": base.date, "gpu": base.gpu.get("name"), "gpu_uuids": list(gpu_uuids(base.gpu)),
        "content_sha256": base.content_sha256}}
    return dataclasses.replace(carried, gpu=gpu, host=host_info(), software=software_info(), method=method,
                               date=datetime.now(timezone.utc).isoformat(timespec="seconds"), raw_path=raw_file,
                               kv_capacity_tokens=kv_capacity_tokens)
