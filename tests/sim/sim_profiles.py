"""Synthetic profiles with hand-checkable curves for the simulator tests (not measurements)."""

from __future__ import annotations

from tokenjoule.calibrate.cost_form import CostCurve
from tokenjoule.calibrate.profile import GPUProfile, HostOverhead
from tokenjoule.kernels.spec import ModelSpec


def make_profile(lat=(0.01, 1e-5), en=(5.0, 5e-3), lat_coef=None, en_coef=None, idle_power_w=100.0,
                 kv_capacity_tokens=100_000, tp=1, model="llama-3.1-8b", datasheet="H100-SXM",
                 host_overhead: HostOverhead | None = None) -> GPUProfile:
    """A synthetic profile: latency = lat[0] + lat[1] * new_tokens (+ features), energy likewise; optional host time.

    A "has_prefill" entry in a coef dict is a constant added to iterations with prefill: it becomes the prefill
    regime's token curve (the decode-only curve shifted up by that constant). A "decode_seqs" entry is a cost per
    decoding sequence: it is added per token to the decode-only curve (where new_tokens == decode sequences).
    """
    knots = (0.0, 100_000.0)
    return GPUProfile(
        gpu={"name": "NVIDIA H100 80GB HBM3 (synthetic)", "datasheet": datasheet}, host={}, software={},
        method={"time": "synthetic", "energy": "synthetic"}, date="2026-01-01T00:00:00Z", engine="tokenjoule",
        mode="cudagraph", model=ModelSpec.from_name(model), tp=tp, idle_power_w=idle_power_w,
        kv_capacity_tokens=kv_capacity_tokens,
        latency=_curve(knots, lat, lat_coef, "s"),
        energy=_curve(knots, en, en_coef, "J"),
        notes="synthetic, hand-set curves for tests", host_overhead=host_overhead)


def _curve(knots, line, coef, unit) -> CostCurve:
    coef = dict(coef or {})
    extra = coef.pop("has_prefill", 0.0)
    per_seq = coef.pop("decode_seqs", 0.0)
    values = (line[0], line[0] + line[1] * knots[1])
    decode = tuple(v + per_seq * k for v, k in zip(values, knots, strict=True))
    return CostCurve(knots, decode, coef, unit, knots, tuple(v + extra for v in values))
