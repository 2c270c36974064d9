"""Carry a profile to another machine of the same GPU type with a short re-measurement there.

Two H200s here drew up to 7% different energy for the same replay, and hosts differ in CPU speed (validation/
README.md). A full sweep takes minutes; this keeps the base profile's shape (its fitted curves) and takes from the
new machine what differs between machines: idle power, the serving loop's host overhead, and one scale each for
the latency and energy curves, the median ratio of measured to predicted cost over a few grid points
(`SHORT_POINTS`) measured there.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from tokenjoule.calibrate.profile import CostCurve, GPUProfile, HostOverhead

# One point per regime the curves cover: small and large decode batches, a ragged decode, prefills, a mixed step.
SHORT_POINTS = ("decode_b1_c512", "decode_b64_c512", "decode_b256_c512", "decode_b128_c256_l1x8192",
                "prefill_b1_l1024", "prefill_b4_l2048", "mixed_p2048_b0_d64_c2048")


def scaled(curve: CostCurve, factor: float) -> CostCurve:
    """The curve times `factor` (knot values and coefficients alike)."""
    return dataclasses.replace(curve, knot_values=tuple(v * factor for v in curve.knot_values),
                               prefill_knot_values=tuple(v * factor for v in curve.prefill_knot_values),
                               coef={k: v * factor for k, v in curve.coef.items()})


def short_recalibration(base: GPUProfile, points: Sequence[dict[str, Any]], idle_power_w: float,
                        host_overhead: HostOverhead | None, note: str) -> GPUProfile:
    """`base` rescaled to a new machine from a few points measured there.

    Args:
        base: the profile to carry.
        points: measured points on the new machine, {"shape": IterationShape, "time_s", "energy_j"} each.
        idle_power_w: idle power measured there.
        host_overhead: host overhead measured there (None keeps the base's).
        note: where the measurements came from (appended to the notes).
    """
    if not points:
        raise ValueError("a short re-calibration needs at least one measured point")
    lat = statistics.median(p["time_s"] / base.latency.of_shape(p["shape"], base.decode_split_rule) for p in points)
    en = statistics.median(p["energy_j"] / base.energy.of_shape(p["shape"], base.decode_split_rule) for p in points)
    notes = (f"{base.notes}; short re-calibration ({note}): latency x{lat:.4f}, energy x{en:.4f}, idle power and "
             "host overhead re-measured")
    return dataclasses.replace(base, latency=scaled(base.latency, lat), energy=scaled(base.energy, en),
                               idle_power_w=idle_power_w, host_overhead=host_overhead or base.host_overhead,
                               notes=notes)
