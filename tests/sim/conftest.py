"""Fixtures for the simulator tests: profiles with hand-checkable curves, and a tiny trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_profiles import make_profile

from tokenjoule.calibrate.cost_form import CostCurve
from tokenjoule.calibrate.profile import GPUProfile, load_profile
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.traces.schema import Trace

TOY_PATH = Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"


@pytest.fixture
def simple_profile() -> GPUProfile:
    """Linear, round-number curves: 10 ms + 10 us/token, 5 J + 5 mJ/token, idle 100 W, 100k KV tokens."""
    return make_profile()


@pytest.fixture
def toy_profile() -> GPUProfile:
    """The calibrate helper's toy profile if present, else plausible hand-set H100 Llama-3.1-8B curves."""
    if TOY_PATH.exists():
        return load_profile(TOY_PATH)
    knots = (1.0, 256.0, 1024.0, 8192.0)
    return GPUProfile(
        gpu={"name": "NVIDIA H100 80GB HBM3 (synthetic)", "datasheet": "H100-SXM"}, host={}, software={},
        method={"time": "synthetic", "energy": "synthetic"}, date="2026-01-01T00:00:00Z", engine="tokenjoule",
        mode="cudagraph", model=ModelSpec.from_name("llama-3.1-8b"), tp=1, idle_power_w=120.0,
        kv_capacity_tokens=400_000,
        latency=CostCurve(knots, (0.007, 0.009, 0.030, 0.24),
                          {"prefill_attn_pairs": 8.7e-10, "decode_ctx_tokens": 3.9e-8}, "s",
                          knots, (0.008, 0.010, 0.031, 0.241)),
        energy=CostCurve(knots, (2.45, 3.78, 18.0, 156.0),
                         {"prefill_attn_pairs": 5.7e-7, "decode_ctx_tokens": 2e-5}, "J",
                         knots, (2.95, 4.28, 18.5, 156.5)),
        notes="synthetic, hand-set curves for tests (not a measurement)")


@pytest.fixture
def tiny_trace() -> Trace:
    """Twelve requests over ~3 s with mixed lengths."""
    arrival = [0.0, 0.1, 0.15, 0.4, 0.9, 1.0, 1.2, 1.7, 2.0, 2.05, 2.6, 3.1]
    inputs = [120, 800, 64, 2000, 300, 1500, 90, 700, 256, 4000, 33, 512]
    outputs = [30, 100, 8, 250, 60, 20, 1, 128, 64, 40, 200, 16]
    return Trace.from_columns(arrival, inputs, outputs, source="tiny")
