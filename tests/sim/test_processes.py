"""Hand-checkable scenarios, asserting on the (event, time, detail) log.

simple_profile: an iteration of n new tokens takes 0.01 + 1e-5 n seconds and 5 + 0.005 n joules; idle is 100 W.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sim_profiles import make_profile

from tokenjoule.calibrate.profile import HostOverhead
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace


def lat(n):
    return 0.01 + 1e-5 * n


def en(n):
    return 5.0 + 0.005 * n


def events(result, kind):
    return [(t, d) for e, t, d in result.events if e == kind]


def test_one_request_alone(simple_profile):
    trace = Trace.from_columns([1.0], [100], [10])
    r = run(SimConfig(record_events=True), trace, simple_profile)
    ttft = r.requests.column("ttft_s")[0].as_py()
    assert ttft == pytest.approx(lat(100))  # one prefill
    assert events(r, "decode") == [(pytest.approx(1.0 + lat(100)), 9)]  # nine more tokens in one stretch
    busy = en(100) + 9 * en(1)
    assert r.requests.column("gpu_energy_attributed_j")[0].as_py() == pytest.approx(busy)
    assert r.summary["gpu_idle_j"] == pytest.approx(100.0 * 1.0)  # idle before the arrival
    assert r.summary["energy_total_j"] == pytest.approx(busy + 100.0)
    assert r.summary["e2e_p50_s"] == pytest.approx(lat(100) + 9 * lat(1))
    assert r.summary["tpot_p50_s"] == pytest.approx(lat(1))


def test_static_batch_pays_padding(simple_profile):
    trace = Trace.from_columns([0.0, 0.0], [100, 300], [5, 10])
    r = run(SimConfig(policy="static", max_batch=2, record_events=True), trace, simple_profile)
    assert events(r, "prefill") == [(0.0, ((0, 300), (1, 300)))]  # padded to the longest prompt
    assert events(r, "decode") == [(pytest.approx(lat(600)), 9)]  # until the longest output
    end = lat(600) + 9 * lat(2)
    e2e = r.requests.column("e2e_s").to_pylist()
    assert e2e == [pytest.approx(end), pytest.approx(end)]  # both return when the batch ends
    total = en(600) + 9 * en(2)
    assert r.requests.column("gpu_energy_attributed_j").to_pylist() == [pytest.approx(total / 2)] * 2
    unpadded = run(SimConfig(policy="static", max_batch=1), trace, simple_profile)
    assert r.summary["gpu_busy_j"] > 0.0
    # padding costs: the short request alone would take en(100) + 4 * en(1)
    col = "gpu_energy_attributed_j"
    assert r.requests.column(col)[0].as_py() > unpadded.requests.column(col)[0].as_py()


def test_host_overhead_lengthens_every_iteration_at_idle_power():
    host = HostOverhead(1e-3, 1e-4)  # 1.1 ms for one sequence
    h = 1.1e-3
    trace = Trace.from_columns([1.0], [100], [10])
    r = run(SimConfig(record_events=True), trace, make_profile(host_overhead=host))
    assert r.requests.column("ttft_s")[0].as_py() == pytest.approx(lat(100) + h)
    assert events(r, "decode") == [(pytest.approx(1.0 + lat(100) + h), 9)]
    assert r.summary["e2e_p50_s"] == pytest.approx(lat(100) + 9 * lat(1) + 10 * h)
    busy = en(100) + 9 * en(1) + 10 * 100.0 * h  # the GPU idles (100 W) while the host works
    assert r.requests.column("gpu_energy_attributed_j")[0].as_py() == pytest.approx(busy)


def test_static_decode_has_no_tail_since_padding_evens_the_contexts():
    # every padded context is 300, so the longest runs no further than the mean: the tail term adds nothing
    profile = make_profile(lat_coef={"decode_tail_ctx_tokens": 1e-5})
    trace = Trace.from_columns([0.0, 0.0], [100, 300], [5, 10])
    r = run(SimConfig(policy="static", max_batch=2), trace, profile)
    end = lat(600) + sum(lat(2) for _ in range(9))
    assert r.requests.column("e2e_s").to_pylist() == [pytest.approx(end)] * 2


def test_ragged_decodes_pay_the_longest_contexts_tail():
    # A (1000-token prompt) and C (10 tokens) prefill together, then decode twice side by side: contexts 1000 and
    # 10 (mean 505), so each step pays 10 us for each of the longest context's 495 tokens beyond the mean
    trace = Trace.from_columns([0.0, 0.0], [1000, 10], [3, 3])
    plain = run(SimConfig(policy="chunked"), trace, make_profile())
    tailed = run(SimConfig(policy="chunked"), trace, make_profile(lat_coef={"decode_tail_ctx_tokens": 1e-5}))
    gap = np.array(tailed.requests.column("e2e_s").to_pylist()) - np.array(plain.requests.column("e2e_s").to_pylist())
    assert gap == pytest.approx([2 * 1e-5 * 495] * 2, rel=1e-9)


def test_chunked_iteration_passes_its_decodes_longest_context(monkeypatch):
    # A (1000-token prompt) decodes alone until B arrives; the next iteration carries A's decode at context 1001
    # beside B's prompt, and must hand a cost model that prices the longest context (a tail term) that context
    from tokenjoule.calibrate.cost_form import IterFeatures
    from tokenjoule.sim.cost import CalibratedCost

    seen = []
    original = CalibratedCost.iteration_of  # what the replica calls: the features one by one, IterFeatures' order
    monkeypatch.setattr(CalibratedCost, "iteration_of",
                        lambda self, *features: seen.append(IterFeatures(*features)) or original(self, *features))
    profile = make_profile(lat_coef={"decode_tail_ctx_tokens": 1e-7})
    run(SimConfig(policy="chunked"), Trace.from_columns([0.0, 0.025], [1000, 50], [5, 2]), profile)
    joint = [f for f in seen if f.prefill_seqs and f.decode_seqs]
    assert joint and joint[0].decode_max_ctx_tokens == 1001 and joint[0].decode_ctx_tokens == 1001


def test_static_waits_for_a_full_batch_until_timeout(simple_profile):
    trace = Trace.from_columns([0.0, 0.2, 5.0], [10, 10, 10], [2, 2, 2])
    r = run(SimConfig(policy="static", max_batch=3, batch_timeout_s=1.0, record_events=True), trace, simple_profile)
    starts = [t for t, _ in events(r, "prefill")]
    assert starts == [pytest.approx(1.0), pytest.approx(6.0)]  # the oldest waited the full timeout each time


def test_continuous_admits_mid_flight(simple_profile):
    trace = Trace.from_columns([0.0, 0.1], [100, 100], [50, 5])
    r = run(SimConfig(record_events=True), trace, simple_profile)
    prefills = events(r, "prefill")
    # A decodes from 0.011 in steps of 0.01001 s; B is admitted at the first boundary after 0.1: step 9.
    boundary = lat(100) + 9 * lat(1)
    assert prefills[1] == (pytest.approx(boundary), ((1, 100),))
    decodes = events(r, "decode")
    assert decodes[0] == (pytest.approx(lat(100)), 9)  # the stretch was cut after 9 steps
    assert r.requests.column("ttft_s")[1].as_py() == pytest.approx(boundary + lat(100) - 0.1)


def test_chunked_prefill_splits_a_long_prompt(simple_profile):
    trace = Trace.from_columns([0.0], [1200], [3])
    r = run(SimConfig(policy="chunked", max_num_batched_tokens=512, max_num_seqs=8, record_events=True), trace,
            simple_profile)
    chunks = [d for _, d in events(r, "prefill")]
    assert chunks == [((0, 512),), ((0, 512),), ((0, 176),)]
    assert r.requests.column("ttft_s")[0].as_py() == pytest.approx(2 * lat(512) + lat(176))


def test_chunked_decodes_ride_along_with_prefill_chunks(simple_profile):
    trace = Trace.from_columns([0.0, 0.05], [10, 1000], [40, 2])
    r = run(SimConfig(policy="chunked", max_num_batched_tokens=512, max_num_seqs=8, record_events=True), trace,
            simple_profile)
    chunks = [d for _, d in events(r, "prefill")]
    assert chunks[1:] == [((1, 511),), ((1, 489),)]  # one budget token goes to request 0's decode


def test_preemption_when_memory_is_short():
    profile = make_profile(kv_capacity_tokens=300)
    trace = Trace.from_columns([0.0, 0.0], [100, 100], [150, 150])
    r = run(SimConfig(record_events=True), trace, profile)
    assert events(r, "preempt")
    assert r.summary["preemptions"] >= 1
    assert r.summary["finished"] == 2
    assert r.requests.column("preemptions").to_pylist()[1] >= 1  # the later admission is the victim
    assert r.summary["conservation_rel_error"] < 1e-9


def test_paged_blocks_run_out_at_a_block_boundary():
    # 5 blocks of 16 tokens. Two 16-token prompts take a block each; both need a new block at decode steps 0 and
    # 16. At step 16 only one block is left: the later request is preempted, then recomputed after A finishes.
    profile = make_profile(kv_capacity_tokens=80)
    trace = Trace.from_columns([0.0, 0.0], [16, 16], [20, 20])
    r = run(SimConfig(record_events=True), trace, profile)
    assert events(r, "decode")[0] == (pytest.approx(lat(32)), 16)
    assert events(r, "preempt") == [(pytest.approx(lat(32) + 16 * lat(2)), 1)]
    recompute = events(r, "prefill")[1]
    assert recompute == (pytest.approx(lat(32) + 16 * lat(2) + 3 * lat(1)), ((1, 16 + 17),))
    assert r.requests.column("preemptions").to_pylist() == [0, 1]
    assert r.summary["conservation_rel_error"] < 1e-9


def test_request_that_can_never_fit_is_rejected_and_counted():
    profile = make_profile(kv_capacity_tokens=1000)
    trace = Trace.from_columns([0.0, 0.5, 1.0], [100, 990, 50], [10, 20, 0])
    r = run(SimConfig(), trace, profile)
    assert r.summary["rejected"] == 2
    assert r.summary["rejected_by_reason"] == {"empty_request": 1, "kv_capacity": 1}
    assert r.requests.column("status").to_pylist() == ["finished", "rejected", "rejected"]
    assert r.requests.column("gpu_energy_attributed_j")[1].as_py() == 0.0


def test_same_seed_same_result(toy_profile, tiny_trace):
    config = SimConfig(replicas=3, router="random", seed=7)
    a, b = run(config, tiny_trace, toy_profile), run(config, tiny_trace, toy_profile)
    assert a.summary == b.summary
    for name in a.requests.column_names:
        np.testing.assert_array_equal(a.requests.column(name).to_numpy(zero_copy_only=False),
                                      b.requests.column(name).to_numpy(zero_copy_only=False))
    other = run(dataclasses.replace(config, seed=8), tiny_trace, toy_profile)
    assert other.requests.column("replica").to_pylist() != a.requests.column("replica").to_pylist()


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding", "random"])
def test_routers_spread_requests(toy_profile, tiny_trace, router):
    r = run(SimConfig(replicas=2, router=router), tiny_trace, toy_profile)
    replicas = r.requests.column("replica").to_numpy()
    assert set(replicas) == {0, 1}
    if router == "round-robin":
        assert list(replicas) == [0, 1] * 6


def test_idle_energy_covers_every_replica_until_the_end(simple_profile):
    trace = Trace.from_columns([0.0], [100], [1])
    r = run(SimConfig(replicas=3), trace, simple_profile)
    # one replica busy for lat(100); the other two idle for the whole run, which lasts lat(100)
    assert r.summary["gpu_idle_j"] == pytest.approx(100.0 * 2 * lat(100))
    assert r.summary["utilization"] == pytest.approx(1 / 3)


def test_host_pue_and_carbon(simple_profile):
    trace = Trace.from_columns([0.0, 1.0], [100, 100], [1, 1])
    base = run(SimConfig(), trace, simple_profile).summary
    r = run(SimConfig(host_power_w=50.0, pue=1.5, carbon_g_per_kwh=400.0), trace, simple_profile).summary
    gpu = base["energy_total_j"]
    host = 50.0 * base["duration_s"]
    assert r["energy_total_j"] == pytest.approx((gpu + host) * 1.5)
    assert r["kg_co2e"] == pytest.approx(r["energy_total_j"] / 3.6e6 * 0.4)
    hourly = run(SimConfig(host_power_w=50.0, pue=1.5, carbon_hourly=(400.0, 0.0)), trace, simple_profile).summary
    assert hourly["kg_co2e"] == pytest.approx(r["kg_co2e"])  # the run lasts ~1 s: all in hour 0


def test_rate_scale_and_window(toy_profile, tiny_trace):
    fast = run(SimConfig(rate_scale=2.0), tiny_trace, toy_profile)
    assert fast.requests.column("arrival_s").to_pylist()[-1] == pytest.approx(3.1 / 2)
    window = run(SimConfig(arrival_window_s=(1.0, 2.1)), tiny_trace, toy_profile)
    assert window.summary["requests"] == 5  # 1.0, 1.2, 1.7, 2.0, 2.05
    assert window.requests.column("arrival_s").to_pylist()[0] == pytest.approx(0.0)


def test_roofline_runs_without_a_profile(tiny_trace):
    r = run(SimConfig(cost="roofline-memory", tp=2, gpu="H200-SXM"), tiny_trace)
    assert r.summary["finished"] == 12
    assert r.summary["cost_model"] == "roofline-memory" and r.summary["profile"] is None
    assert r.summary["gpu_idle_j"] == 0.0  # the theoretical baseline has no idle power


def test_modeled_tp_is_labelled(toy_profile, tiny_trace):
    r = run(SimConfig(tp=2), tiny_trace, toy_profile)
    assert r.summary["modeled"] is True
    assert run(SimConfig(), tiny_trace, toy_profile).summary["modeled"] is False


@pytest.mark.parametrize("kwargs,match", [
    ({"model": "llama-3.1-70b"}, "is for model"),
    ({"gpu": "H200-SXM"}, "measured on"),
    ({"tp": 3}, "must divide"),
])
def test_profile_mismatch_and_impossible_configs(toy_profile, tiny_trace, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(SimConfig(**kwargs), tiny_trace, toy_profile)


@pytest.mark.parametrize("kwargs", [{"replicas": 0}, {"policy": "fifo"}, {"pue": 0.5}, {"router": "x"},
                                    {"cost": "magic"}, {"rate_scale": 0.0}, {"pue": float("nan")},
                                    {"host_power_w": float("nan")}, {"max_num_seqs": 0}, {"max_batch": 0},
                                    {"batch_timeout_s": -1.0}, {"gpu_memory_utilization": 1.5}, {"seed": -1},
                                    {"allreduce_bus_bytes_per_s": 0.0}, {"carbon_hourly": (100.0, -1.0)},
                                    {"carbon_hourly": ()}, {"policy": "chunked", "max_num_seqs": 4096}])
def test_bad_config_fields(kwargs):
    with pytest.raises(ValueError):
        SimConfig(**kwargs)


def test_long_trace_finishes_everything(toy_profile, rng):
    n = 3000
    trace = Trace.from_columns(np.sort(rng.uniform(0, 60, n)), rng.integers(1, 4000, n), rng.integers(1, 600, n))
    for policy in ("continuous", "chunked", "static"):
        r = run(SimConfig(policy=policy, replicas=2), trace, toy_profile)
        assert r.summary["finished"] + r.summary["rejected"] == n
        assert r.summary["conservation_rel_error"] < 1e-9
