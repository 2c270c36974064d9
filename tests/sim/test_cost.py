"""Cost models: closed-form decode stretches equal the per-iteration sums; roofline FLOPs; TP rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_profiles import make_profile

from tokenjoule.calibrate.profile import DATASHEETS
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.sim.cost import (
    CalibratedCost,
    IterFeatures,
    Line,
    ModeledTPCost,
    RooflineCost,
    StretchCost,
    shape_cost,
)

SPEC = ModelSpec.from_name("llama-3.1-8b")


def _models(toy):
    return [CalibratedCost(toy), ModeledTPCost(CalibratedCost(toy), 2), ModeledTPCost(CalibratedCost(toy), 8),
            RooflineCost(SPEC, DATASHEETS["H100-SXM"]), RooflineCost(SPEC, DATASHEETS["H100-SXM"], memory_bound=True),
            RooflineCost(SPEC, DATASHEETS["A100-SXM-80GB"], tp=4, memory_bound=True)]


@pytest.mark.parametrize("index", range(6))
@pytest.mark.parametrize("batch,ctx_each,k", [(1, 100, 1), (3, 500, 17), (64, 2000, 300), (256, 30, 5000)])
def test_stretch_equals_sum_of_iterations(toy_profile, index, batch, ctx_each, k):
    model = _models(toy_profile)[index]
    stretch = model.decode_stretch(batch, batch * ctx_each)
    steps = [model.iteration(IterFeatures(batch, 0, 0, batch * (ctx_each + j), batch)) for j in range(k)]
    assert stretch.time_s(k) == pytest.approx(sum(t for t, _ in steps), rel=1e-9)
    assert stretch.energy_j(k) == pytest.approx(sum(e for _, e in steps), rel=1e-9)


def test_memory_bound_roofline_crosses_over():
    # A tiny batch is memory bound, and stays so; FLOPs alone underestimate its time.
    compute = RooflineCost(SPEC, DATASHEETS["H100-SXM"])
    memory = RooflineCost(SPEC, DATASHEETS["H100-SXM"], memory_bound=True)
    f = IterFeatures(1, 0, 0, 1000, 1)
    assert memory.iteration(f)[0] > 10 * compute.iteration(f)[0]
    # a large prefill is compute bound: both agree
    big = IterFeatures(8192, 8192 * 8193 // 2, 0, 0, 0)
    assert memory.iteration(big)[0] == pytest.approx(compute.iteration(big)[0])


def test_roofline_flops_match_spec():
    model = RooflineCost(SPEC, DATASHEETS["H100-SXM"])
    t, e = model.iteration(IterFeatures(1, 0, 0, 999, 1))
    assert t == pytest.approx(SPEC.flops_per_token(999) / DATASHEETS["H100-SXM"].peak_flops)
    assert e == pytest.approx(t * 700.0)


def test_shape_cost_matches_profile_cost(toy_profile):
    shape = IterationShape(prefill=((300, 0), (128, 64)), decode=(10, 2000, 77))
    t, e = shape_cost(CalibratedCost(toy_profile), shape)
    assert (t, e) == pytest.approx(toy_profile.cost(shape), rel=1e-12)


def test_vectorised_evaluate_matches_scalar(toy_profile):
    model = CalibratedCost(toy_profile)
    n = np.array([1, 40, 700, 20000])
    ctx = np.array([10, 0, 5000, 100])
    t, e = model.evaluate(n, decode_ctx_tokens=ctx, decode_seqs=n)
    for i in range(len(n)):
        ti, ei = model.iteration(IterFeatures(int(n[i]), 0, 0, int(ctx[i]), int(n[i])))
        assert (t[i], e[i]) == pytest.approx((ti, ei), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(1e-4, 1.0), d=st.floats(0, 1e-3), d2=st.floats(0, 1e-3), a2=st.floats(1e-4, 1.0),
       dt=st.floats(0, 100), two=st.booleans())
def test_steps_within_is_the_first_boundary_not_before(a, d, a2, d2, dt, two):
    stretch = StretchCost((Line(a, d), Line(a2, d2)) if two else (Line(a, d),))
    k = stretch.steps_within(dt)
    assert stretch.time_s(k) >= dt
    assert k == 0 or stretch.time_s(k - 1) < dt


def test_modeled_tp_scales_time_and_kv(simple_profile):
    base = CalibratedCost(simple_profile)
    tp2 = ModeledTPCost(base, 2)
    assert tp2.modeled and not base.modeled
    f = IterFeatures(1000)
    t1, e1 = base.iteration(f)
    t2, e2 = tp2.iteration(f)
    assert t1 / 2 < t2 < t1  # half the compute plus all-reduces
    assert e2 == pytest.approx(e1 - 100.0 * t1 + 2 * 100.0 * t2)
    assert tp2.kv_capacity_tokens == 2 * 100_000 + SPEC.weight_bytes // SPEC.kv_bytes_per_token
    assert tp2.idle_power_w == 200.0


@pytest.mark.parametrize("tp", [0, 3, 16])
def test_tp_must_divide_heads(simple_profile, tp):
    with pytest.raises(ValueError, match="tp="):
        ModeledTPCost(CalibratedCost(simple_profile), tp)


def test_only_tp1_profiles_are_scaled():
    with pytest.raises(ValueError, match="only a tp=1 profile"):
        ModeledTPCost(CalibratedCost(make_profile(tp=2)), 4)


def test_roofline_kv_capacity_from_memory():
    model = RooflineCost(SPEC, DATASHEETS["H100-SXM"], gpu_memory_utilization=0.9)
    expected = (80e9 * 0.9 - SPEC.weight_bytes) // SPEC.kv_bytes_per_token
    assert model.kv_capacity_tokens == expected
    assert math.isclose(expected, 426_000, rel_tol=0.02)  # ~56 GB of 128 KiB tokens
    with pytest.raises(ValueError, match="no KV memory"):
        RooflineCost(ModelSpec.from_name("llama-3.1-70b"), DATASHEETS["H100-SXM"])
