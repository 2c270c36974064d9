"""Synthetic profiles with hand-checkable curves for the simulator tests (not measurements)."""

from __future__ import annotations

from tokenjoule.calibrate.profile import CostCurve, GPUProfile
from tokenjoule.kernels.spec import ModelSpec


def make_profile(lat=(0.01, 1e-5), en=(5.0, 5e-3), lat_coef=None, en_coef=None, idle_power_w=100.0,
                 kv_capacity_tokens=100_000, tp=1, model="llama-3.1-8b", datasheet="H100-SXM") -> GPUProfile:
    """A synthetic profile: latency = lat[0] + lat[1] * new_tokens (+ features), energy likewise."""
    knots = (0.0, 100_000.0)
    return GPUProfile(
        gpu={"name": "NVIDIA H100 80GB HBM3 (synthetic)", "datasheet": datasheet}, host={}, software={},
        method={"time": "synthetic", "energy": "synthetic"}, date="2026-01-01T00:00:00Z", engine="tokenjoule",
        mode="cudagraph", model=ModelSpec.from_name(model), tp=tp, idle_power_w=idle_power_w,
        kv_capacity_tokens=kv_capacity_tokens,
        latency=CostCurve(knots, (lat[0], lat[0] + lat[1] * knots[1]), dict(lat_coef or {}), "s"),
        energy=CostCurve(knots, (en[0], en[0] + en[1] * knots[1]), dict(en_coef or {}), "J"),
        notes="synthetic, hand-set curves for tests")
