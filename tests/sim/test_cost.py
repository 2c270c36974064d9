"""Cost models: closed-form decode stretches equal the per-iteration sums; roofline FLOPs; TP rules."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_profiles import make_profile

from tokenjoule.calibrate.cost_form import DecodeSplitRule, IterFeatures
from tokenjoule.calibrate.profile import DATASHEETS, HostOverhead
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.sim.cost import CalibratedCost, Line, ModeledTPCost, RooflineCost, StretchCost, shape_cost

SPEC = ModelSpec.from_name("llama-3.1-8b")


HOST = HostOverhead(2e-4, 6e-6, 1e-9)


def _with_new_terms(profile):
    """The profile plus a longest-context coefficient and host overhead (synthetic values)."""
    def curve(c, per_token):
        return dataclasses.replace(c, coef={**c.coef, "decode_tail_ctx_tokens": per_token})
    return dataclasses.replace(profile, latency=curve(profile.latency, 3e-7), energy=curve(profile.energy, 1.5e-4),
                               host_overhead=HOST)


def _models(toy):
    new = CalibratedCost(_with_new_terms(toy))
    return [CalibratedCost(toy), ModeledTPCost(CalibratedCost(toy), 2), ModeledTPCost(CalibratedCost(toy), 8),
            RooflineCost(SPEC, DATASHEETS["H100-SXM"]), RooflineCost(SPEC, DATASHEETS["H100-SXM"], memory_bound=True),
            RooflineCost(SPEC, DATASHEETS["A100-SXM-80GB"], tp=4, memory_bound=True), new, ModeledTPCost(new, 4)]


@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("batch,ctx_each,k", [(1, 100, 1), (3, 500, 17), (64, 2000, 300), (256, 30, 5000)])
def test_stretch_equals_sum_of_iterations(toy_profile, index, batch, ctx_each, k):
    model = _models(toy_profile)[index]
    longest = ctx_each * (1 + (batch > 1))  # ragged: one context twice as long as the mean
    stretch = model.decode_stretch(batch, batch * ctx_each, longest)
    steps = [model.iteration(IterFeatures(batch, 0, 0, batch * (ctx_each + j), batch, 0, longest + j))
             for j in range(k)]
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
    stretch = StretchCost(a, d, bound=Line(a2, d2) if two else None)
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
    with pytest.raises(ValueError, match="--tp "):
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


def test_longest_context_term_by_hand():
    # latency 10 ms + 10 us/token + 40 ns per context token + 300 ns per token of the longest context
    model = CalibratedCost(make_profile(lat_coef={"decode_ctx_tokens": 4e-8, "decode_tail_ctx_tokens": 3e-7},
                                        en_coef={"decode_tail_ctx_tokens": 1e-3}))
    # 4 sequences, contexts summing to 4000 (mean 1000), the longest 2500: its tail is 1500 tokens (no split rule)
    t, e = model.iteration(IterFeatures(4, 0, 0, 4000, 4, 0, 2500))
    assert t == pytest.approx(0.01 + 4e-5 + 4e-8 * 4000 + 3e-7 * 1500, rel=1e-12)
    assert e == pytest.approx(5.0 + 0.02 + 1e-3 * 1500, rel=1e-12)
    stretch = model.decode_stretch(4, 4000, 2500)
    assert stretch.bound is None
    # the sum grows by 4 a step and the longest by 1, so the tail stays 1500 tokens: no slope of its own
    assert (stretch.time_a, stretch.time_d) == pytest.approx((0.01 + 4e-5 + 4e-8 * 4000 + 3e-7 * 1500, 4e-8 * 4),
                                                             rel=1e-12)
    assert (stretch.energy_a, stretch.energy_d) == pytest.approx((5.02 + 1.5, 0.0), rel=1e-12, abs=1e-15)
    assert model.iteration(IterFeatures(4, 0, 0, 4000, 4, 0, 1000)) == model.iteration(IterFeatures(4, 0, 0, 4000, 4))
    # the roofline has no such term: the longest context changes nothing
    roof = RooflineCost(SPEC, DATASHEETS["H100-SXM"], memory_bound=True)
    assert roof.decode_stretch(4, 4000, 2500) == roof.decode_stretch(4, 4000, 1000)


def test_split_rule_divides_the_longest_context_by_the_batch_splits():
    rule = DecodeSplitRule(target_programs=528, max_splits=32, kv_heads=8)  # splits: b16 -> 5, b64 -> 2, b128 -> 1
    profile = dataclasses.replace(make_profile(lat_coef={"decode_tail_ctx_tokens": 1e-6}), decode_split_rule=rule)
    model, plain = CalibratedCost(profile), CalibratedCost(dataclasses.replace(profile, decode_split_rule=None))
    for batch, splits in ((16, 5), (64, 2), (128, 1)):
        f = IterFeatures(batch, 0, 0, batch * 256, batch, 0, 8192)
        extra = model.iteration(f)[0] - model.iteration(dataclasses.replace(f, decode_max_ctx_tokens=0))[0]
        assert extra == pytest.approx(1e-6 * (8192 - 256) / splits, rel=1e-9)  # the mean context is 256
        assert plain.iteration(f)[0] - model.iteration(f)[0] == pytest.approx(1e-6 * (8192 - 256) * (1 - 1 / splits))
        # a stretch prices the same tail at every step (the longest and the mean context both grow by one)
        stretch = model.decode_stretch(batch, batch * 256, 8192)
        assert stretch.time_s(3) == pytest.approx(sum(model.iteration(IterFeatures(
            batch, 0, 0, batch * (256 + j), batch, 0, 8192 + j))[0] for j in range(3)), rel=1e-12)
    # the profile prices a shape the same way
    shape = IterationShape(decode=(8192,) + (256,) * 63)
    assert profile.cost(shape)[0] == pytest.approx(model.iteration(IterFeatures.of_shape(shape))[0], rel=1e-12)


def test_host_overhead_by_hand():
    host = HostOverhead(1e-3, 5e-6, 2e-8)
    plain, hosted = CalibratedCost(make_profile()), CalibratedCost(make_profile(host_overhead=host))
    f = IterFeatures(130, 600, 0, 5000, 100, 3)  # 100 decodes and 3 prefill chunks: 103 sequences
    h = 1e-3 + 5e-6 * 103 + 2e-8 * 103**2
    (t0, e0), (t, e) = plain.iteration(f), hosted.iteration(f)
    assert t == pytest.approx(t0 + h, rel=1e-12)
    assert e == pytest.approx(e0 + 100.0 * h, rel=1e-12)  # idle power while the GPU waits on the host
    h64 = 1e-3 + 5e-6 * 64 + 2e-8 * 64**2
    s0, s = plain.decode_stretch(64, 64_000, 3000), hosted.decode_stretch(64, 64_000, 3000)
    assert s.time_a == pytest.approx(s0.time_a + h64, rel=1e-12)
    assert s.time_d == s0.time_d
    assert s.energy_a == pytest.approx(s0.energy_a + 100.0 * h64, rel=1e-12)
    assert s.energy_d == s0.energy_d
    assert s.time_s(7) == pytest.approx(s0.time_s(7) + 7 * h64, rel=1e-12)
    t_vec, e_vec = hosted.evaluate(np.array([130]), prefill_attn_pairs=np.array([600]),
                                   decode_ctx_tokens=np.array([5000]), decode_seqs=np.array([100]),
                                   prefill_seqs=np.array([3]), has_prefill=np.array([1.0]))
    assert (t_vec[0], e_vec[0]) == pytest.approx((t, e), rel=1e-12)


def test_modeled_tp_keeps_host_time_whole():
    host = HostOverhead(1e-3, 5e-6)
    plain, hosted = (ModeledTPCost(CalibratedCost(make_profile(host_overhead=h)), 4) for h in (None, host))
    f = IterFeatures(256, 0, 0, 256_000, 256)
    h = 1e-3 + 5e-6 * 256
    (t0, e0), (t, e) = plain.iteration(f), hosted.iteration(f)
    assert t == pytest.approx(t0 + h, rel=1e-12)  # not split by tp: one serving loop
    assert e == pytest.approx(e0 + 4 * 100.0 * h, rel=1e-12)  # four GPUs idle meanwhile
    s0, s = plain.decode_stretch(256, 256_000, 1000), hosted.decode_stretch(256, 256_000, 1000)
    assert s.time_s(10) == pytest.approx(s0.time_s(10) + 10 * h, rel=1e-12)
    assert s.energy_j(10) == pytest.approx(s0.energy_j(10) + 10 * 4 * 100.0 * h, rel=1e-12)


def test_profiles_without_the_new_terms_cost_as_before(toy_profile):
    """No longest-context coefficient and no host overhead: bit-identical to the forward-pass curves alone."""
    model = CalibratedCost(toy_profile)
    assert toy_profile.host_overhead is None and "decode_tail_ctx_tokens" not in toy_profile.latency.coef
    f = IterFeatures(300, 0, 0, 90_000, 300, 0, 8000)
    assert model.iteration(f) == model.iteration(dataclasses.replace(f, decode_max_ctx_tokens=0))
    assert model.iteration(f) == model.gpu_iteration(f)
    assert model.decode_stretch(300, 90_000, 8000) == model.decode_stretch(300, 90_000, 0)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(new_decodes=st.integers(1, 512), prefill=st.integers(0, 8192), chunks=st.integers(0, 4),
       ctx_each=st.integers(1, 20_000), longest_extra=st.integers(0, 50_000), shipped=st.booleans())
def test_the_simulators_written_out_iteration_price_is_the_cost_forms(toy_profile, new_decodes, prefill, chunks,
                                                                      ctx_each, longest_extra, shipped):
    # the fixture is read, never changed, so examples may share it. CalibratedCost.iteration writes out both curves'
    # `CurveTable.iteration` for iterations with decodes (the hot path): it must give the very same floats, host time
    # at idle power included
    from tokenjoule.calibrate.profile import load_profile

    profile = load_profile("h200-llama-3.1-8b-tokenjoule-cudagraph") if shipped else _with_new_terms(toy_profile)
    chunks = chunks if prefill else 0
    f = IterFeatures(new_tokens=new_decodes + prefill, prefill_attn_pairs=prefill * (prefill + 1) // 2 if chunks else 0,
                     prefill_ctx_tokens=0, decode_ctx_tokens=new_decodes * ctx_each, decode_seqs=new_decodes,
                     prefill_seqs=chunks, decode_max_ctx_tokens=ctx_each + longest_extra)
    rule = profile.decode_split_rule
    t = profile.latency.table().iteration(f, rule)
    e = profile.energy.table().iteration(f, rule)
    host = profile.host_overhead.seconds(f.decode_seqs + f.prefill_seqs, f.prefill_seqs) if profile.host_overhead else 0
    expected = (t + host, e + profile.idle_power_w * host) if profile.host_overhead else (t, e)
    model = CalibratedCost(profile)
    assert model.iteration(f) == expected
    assert model.iteration(f) == expected  # again: with prefill, the token terms come from the memo this time
