"""The load-aware estimate: per-request terms by hand, rejections, exactness on isolated requests, the window
cache, the adaptive pads, cold starts, the fluid idle queue, error bars, and agreement with a full replay."""

from __future__ import annotations

import numpy as np
import pytest
from sim_profiles import make_profile

from tokenjoule.calibrate.profile import HostOverhead
from tokenjoule.sim.cost import CalibratedCost
from tokenjoule.sim.project.load_aware import LoadAwareConfig, LoadAwareProjector, SeatModel, cover_s, rejected_mask
from tokenjoule.sim.project.projection import ProjectConfig, project
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


def test_seat_line_leaves_the_longest_context_to_the_batch():
    """The longest-context term is paid once per step by the whole batch: in u_j, not in a seat's context slope."""
    profile = make_profile(en_coef={"decode_ctx_tokens": 2e-5, "decode_tail_ctx_tokens": 1e-3},
                           host_overhead=HostOverhead(1e-3, 1e-5))
    seats = SeatModel.of(CalibratedCost(profile))
    assert seats.seat_j[1] == pytest.approx(2e-5, rel=1e-9)
    assert seats.seat_j[0] == pytest.approx(5.005 + 100.0 * 1.01e-3, rel=1e-9)  # host time of one sequence at idle


def test_isolated_requests_match_exactly_with_the_new_terms():
    """A longest-context term and host overhead: the simulations still price each lone request exactly."""
    profile = make_profile(lat_coef={"decode_ctx_tokens": 4e-8, "decode_tail_ctx_tokens": 3e-7},
                           en_coef={"decode_ctx_tokens": 2e-5, "decode_tail_ctx_tokens": 4e-4},
                           host_overhead=HostOverhead(1e-3, 1e-5, 1e-8))
    trace = Trace.from_columns([0.0, 100.0, 250.0], [100, 2000, 30], [50, 10, 400])
    replay = run(SimConfig(), trace, profile).summary
    est = _load_aware(trace, profile)
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=1e-9)
    assert est.duration_s == pytest.approx(replay["duration_s"], rel=1e-9)

def test_rejected_mask_mirrors_the_simulator():
    config = SimConfig(max_num_batched_tokens=100, block_size=16)
    inp = np.array([10, 0, 90, 50, 200])
    out = np.array([5, 5, 20, 0, 5])
    # KV capacity 160 tokens = 10 blocks: 200 + 5 needs 13 blocks; 90 + 20 - 1 > 100 batched tokens
    assert rejected_mask(inp, out, config, 160).tolist() == [False, True, True, True, True]
    chunked = SimConfig(policy="chunked", max_num_batched_tokens=300)
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
    est = _load_aware(trace, simple_profile, load=LoadAwareConfig(sims_per_signature=1))
    assert est.simulations == 2  # five full windows share one; the last one's rate is over its 40 s of arrivals
    assert est.windows == 6 and est.requests == 24
    replay = run(SimConfig(), trace, simple_profile).summary
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=0.01)
    # by default the first three windows of a signature are simulated, the other two get their mean
    assert _load_aware(trace, simple_profile).simulations == 4
    assert _load_aware(trace, simple_profile, load=LoadAwareConfig(sims_per_signature=2)).simulations == 3


def test_cover_s_by_hand():
    # pad p leaves sum((hold - p)+) = 10% of sum(hold) = 1.6 uncovered: only the 10 s request exceeds it
    assert cover_s(np.array([1.0, 2.0, 3.0, 10.0]), 0.9) == pytest.approx(8.4)
    # 50%: budget 8; 10 and 3 exceed p = 2.5 by 7.5 + 0.5
    assert cover_s(np.array([3.0, 10.0, 1.0, 2.0]), 0.5) == pytest.approx(2.5)
    assert cover_s(np.array([]), 0.99) == 0.0


def _slow_decode_profile():
    """An eager-engine-like profile: 40 ms steps whatever the batch, 7 J per step: small batches cost dearly."""
    return make_profile(lat=(0.04, 1e-6), en=(7.0, 0.02))


def test_pads_grow_to_cover_long_lived_requests():
    """Requests that decode for ~60 s: a 10 s pad would price them in a filling or draining batch."""
    profile = _slow_decode_profile()
    trace = synthesize(SynthSpec(1200, rate_per_s=1.0, input_tokens=200, output_tokens=1500),
                       np.random.default_rng(5))
    replay = _gpu_j(run(SimConfig(), trace, profile).summary)
    est = _load_aware(trace, profile)
    assert est.pad_s > 60.0
    assert est.energy_j == pytest.approx(replay, rel=0.03)
    pinned = _load_aware(trace, profile, load=LoadAwareConfig(pad_s=10.0, max_pad_s=10.0))
    assert pinned.pad_s == 10.0
    assert pinned.energy_j > 1.1 * replay


def test_a_cold_start_does_not_stand_in_for_steady_windows():
    """Steady arrivals: the first window fills an empty server; the rest, alike, share their own simulation."""
    profile = _slow_decode_profile()
    n = 900
    trace = Trace.from_columns(np.arange(n, dtype=float), np.full(n, 200), np.full(n, 1500))
    replay = run(SimConfig(), trace, profile).summary
    est = _load_aware(trace, profile, load=LoadAwareConfig(pad_s=80.0, sims_per_signature=1))
    assert est.pad_s == 80.0  # long enough from the start: no window is simulated twice
    assert est.simulations == 3  # the cold first window, the steady ones, the draining last one
    assert est.energy_j == pytest.approx(_gpu_j(replay), rel=0.002)
    # the server never idles: work spilling over a window's end carries into the next one
    assert replay["gpu_idle_j"] == pytest.approx(0.0, abs=1e-6)
    assert est.idle_j < 1e-3 * est.energy_j


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


def test_growing_pads_do_not_depend_on_batch_boundaries():
    """A window whose pad grows is re-simulated when enough of the stream has arrived, whatever the batches."""
    profile = _slow_decode_profile()
    trace = synthesize(SynthSpec(400, rate_per_s=1.0, input_tokens=200, output_tokens=1500), np.random.default_rng(9))
    config = ProjectConfig(estimators=("load-aware",))
    one = project(trace, profile, config).load_aware
    many = project(trace, profile, config, batch_rows=13).load_aware
    assert one.pad_s > 60.0
    assert (many.energy_j, many.simulations, many.pad_s) == (one.energy_j, one.simulations, one.pad_s)


def test_config_validation():
    with pytest.raises(ValueError, match="--window-s"):
        LoadAwareConfig(window_s=0)
    with pytest.raises(ValueError, match="rate_ratio"):
        LoadAwareConfig(rate_ratio=1.0)
    with pytest.raises(ValueError, match="--pad-s 20: must be <= 10 s"):
        LoadAwareConfig(pad_s=20.0, max_pad_s=10.0)
    with pytest.raises(ValueError, match="pad_coverage"):
        LoadAwareConfig(pad_coverage=1.0)
    with pytest.raises(ValueError, match="sims_per_signature"):
        LoadAwareConfig(sims_per_signature=0)
    with pytest.raises(ValueError, match="no requests"):
        LoadAwareProjector(CalibratedCost(make_profile()), SimConfig(), LoadAwareConfig()).result()
