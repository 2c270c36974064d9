"""The load-aware estimate: per-request terms by hand, rejections, exactness on isolated requests, the window
cache, the fluid idle queue, error bars, and agreement with a full replay on a small synthetic trace."""

from __future__ import annotations

import numpy as np
import pytest
from sim_profiles import make_profile

from tokenjoule.sim.cost import CalibratedCost
from tokenjoule.sim.project_load import LoadAwareConfig, LoadAwareProjector, SeatModel, rejected_mask
from tokenjoule.sim.projection import ProjectConfig, project
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace
from tokenjoule.traces.synth import SynthSpec, synthesize


def _gpu_j(summary: dict) -> float:
    return summary["gpu_busy_j"] + summary["gpu_idle_j"]


def _load_aware(trace: Trace, profile, sim: SimConfig | None = None, load: LoadAwareConfig | None = None):
    config = ProjectConfig(sim=sim or SimConfig(), load=load or LoadAwareConfig(), estimators=("load-aware",))
    return project(trace, profile, config).load_aware


def test_seat_terms_by_hand(simple_profile):
    seats = SeatModel.of(CalibratedCost(simple_profile))
    t = seats.terms(np.array([10, 7]), np.array([4, 1]))
    # 3 decode steps at contexts 10, 11, 12; a one-token output has none
    assert t["decode_steps"].tolist() == [3.0, 0.0]
    assert t["context_tokens"].tolist() == [33.0, 0.0]
    # simple profile: prefill energy 5 J + 5 mJ/token
    assert t["prefill_j"].tolist() == pytest.approx([5.05, 5.035], rel=1e-9)
    assert seats.seat_j == pytest.approx((5.005, 0.0), abs=1e-9)


def test_rejected_mask_mirrors_the_simulator():
    config = SimConfig(max_batched_tokens=100, kv_block_tokens=16)
    inp = np.array([10, 0, 90, 50, 200])
    out = np.array([5, 5, 20, 0, 5])
    # KV capacity 160 tokens = 10 blocks: 200 + 5 needs 13 blocks; 90 + 20 - 1 > 100 batched tokens
    assert rejected_mask(inp, out, config, 160).tolist() == [False, True, True, True, True]
    chunked = SimConfig(policy="chunked", max_batched_tokens=300)
    assert rejected_mask(np.array([90]), np.array([20]), chunked, 160).tolist() == [False]


def test_isolated_requests_match_the_replay_exactly(simple_profile):
    """Requests minutes apart are each simulated alone: busy energy exact, idle from t=0 to the last finish."""
    trace = Trace.from_columns([0.0, 100.0, 250.0], [100, 2000, 30], [50, 10, 400])
    replay = run(SimConfig(), trace, simple_profile).summary
    est = _load_aware(trace, simple_profile)
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=1e-9)
    assert est.busy_j == pytest.approx(replay["gpu_busy_j"], rel=1e-9)
    assert est.duration_s == pytest.approx(replay["duration_s"], rel=1e-9)
    assert (est.windows, est.windows_with_requests, est.simulations) == (5, 3, 3)


def test_windows_with_the_same_signature_share_one_simulation(simple_profile):
    # identical request pattern every 60 s window
    base = np.array([1.0, 5.0, 20.0, 40.0])
    arrival = np.concatenate([base + 60 * k for k in range(6)])
    trace = Trace.from_columns(arrival, np.full(len(arrival), 300), np.full(len(arrival), 40))
    est = _load_aware(trace, simple_profile)
    assert est.simulations == 2  # five full windows share one; the last one's rate is over its 40 s of arrivals
    assert est.windows == 6 and est.requests == 24
    replay = run(SimConfig(), trace, simple_profile).summary
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=0.01)


def test_fluid_queue_carries_overload_into_the_next_window(toy_profile):
    """A burst that takes longer than its window leaves no idle time until the backlog is served."""
    trace = Trace.from_columns(np.linspace(0.0, 1.0, 400), np.full(400, 4000), np.full(400, 500))
    est = _load_aware(trace, toy_profile, load=LoadAwareConfig(window_s=10.0))
    replay = run(SimConfig(), trace, toy_profile).summary
    assert est.duration_s > 10.0
    assert est.idle_j == pytest.approx(0.0, abs=1e-6)
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=0.05)


def test_rejected_requests_are_counted_and_cost_nothing(simple_profile):
    trace = Trace.from_columns([0.0, 1.0, 2.0], [100, 200_000, 50], [10, 10, 10])
    est = _load_aware(trace, simple_profile)
    assert (est.requests, est.rejected) == (2, 1)
    replay = run(SimConfig(), trace, simple_profile).summary
    assert replay["rejected"] == 1
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=1e-6)


@pytest.mark.parametrize("rate", [0.5, 4.0, 15.0])
def test_agrees_with_a_full_replay(toy_profile, rate):
    lengths = Trace.from_columns(np.zeros(6), [60, 300, 900, 1500, 3000, 120], [20, 300, 150, 40, 250, 600])
    trace = synthesize(SynthSpec(1500, rate_per_s=rate), np.random.default_rng(7), lengths_from=lengths)
    est = _load_aware(trace, toy_profile)
    replay = run(SimConfig(), trace, toy_profile).summary
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=0.05)
    assert est.duration_s == pytest.approx(replay["duration_s"], rel=0.05)
    assert 0 < est.err_j < 0.2 * est.energy_j


def test_results_do_not_depend_on_batch_boundaries(toy_profile):
    trace = synthesize(SynthSpec(600, rate_per_s=3.0, input_tokens=500, output_tokens=80), np.random.default_rng(3))
    one = project(trace, toy_profile, ProjectConfig(estimators=("load-aware",))).load_aware
    many = project(trace, toy_profile, ProjectConfig(estimators=("load-aware",)), batch_rows=7).load_aware
    assert many.energy_j == pytest.approx(one.energy_j, rel=1e-12)
    assert many.simulations == one.simulations


def test_config_validation():
    with pytest.raises(ValueError, match="window_s"):
        LoadAwareConfig(window_s=0)
    with pytest.raises(ValueError, match="rate_ratio"):
        LoadAwareConfig(rate_ratio=1.0)
    with pytest.raises(ValueError, match="no requests"):
        LoadAwareProjector(CalibratedCost(make_profile()), SimConfig(), LoadAwareConfig()).result()
