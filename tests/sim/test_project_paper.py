"""The paper's binned estimate: batch sizes, one batch's energy and the bin sum, checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sim_profiles import make_profile

from tokenjoule.sim.cost import CalibratedCost
from tokenjoule.sim.project.binned import batch_cost, batch_size, paper_estimate
from tokenjoule.traces.binning import BinSpec, bin_arrays

# Energy: 1 J per iteration (flat token curve) + 1e-4 J per prefill pair + 1e-3 J per decode context token
# + 1e-2 J per decode sequence + 0.5 J per prefill iteration.
EN_COEF = {"prefill_attn_pairs": 1e-4, "decode_ctx_tokens": 1e-3, "decode_seqs": 1e-2, "has_prefill": 0.5}


def _cost(kv_capacity_tokens: int = 12) -> CalibratedCost:
    return CalibratedCost(make_profile(en=(1.0, 0.0), en_coef=EN_COEF, kv_capacity_tokens=kv_capacity_tokens))


def test_batch_size_is_kv_limited_and_capped():
    assert batch_size(32, 8, 1000, 256) == 25  # 1000 // 40
    assert batch_size(32, 8, 100_000, 256) == 256
    assert batch_size(8192, 512, 8000, 256) == 0  # one request does not fit
    with pytest.raises(ValueError, match="--max-batch"):
        batch_size(32, 8, 1000, 0)


def test_batch_energy_by_hand():
    # prefill of 2 x 4 tokens: 1 + 1e-4 * (2 * 4 * 5 / 2) + 0.5 = 1.502
    # decode steps j = 0, 1 (3 outputs, the first from prefill): 1 + 1e-3 * 2 * (4 + j) + 1e-2 * 2
    expected = 1.502 + (1 + 0.008 + 0.02) + (1 + 0.010 + 0.02)
    assert batch_cost(_cost(), 2, 4, 3)[1] == pytest.approx(expected, rel=1e-12)


def test_batch_time_by_hand():
    # latency 0.01 s + 1e-5 s per new token: prefill of 8 tokens, then 2 decode steps of 2 sequences
    assert batch_cost(_cost(), 2, 4, 3)[0] == pytest.approx((0.01 + 8e-5) + 2 * (0.01 + 2e-5), rel=1e-12)


def test_busy_time_is_count_over_batch_times_batch_time():
    spec = BinSpec((4, 8), (2, 4))
    est = paper_estimate(bin_arrays(np.array([3, 4, 5]), np.array([2, 2, 3]), spec), _cost(12), max_batch=4)
    t42, t84 = batch_cost(_cost(), 2, 4, 2)[0], batch_cost(_cost(), 1, 8, 4)[0]
    assert est.busy_s == pytest.approx(2 / 2 * t42 + 1 / 1 * t84, rel=1e-12)


def test_batch_decode_of_equal_prompts_has_no_tail():
    # as above, with 0.1 J per tail token: the batch's contexts are all equal, so the longest has no tail
    cost = CalibratedCost(make_profile(en=(1.0, 0.0), en_coef={**EN_COEF, "decode_tail_ctx_tokens": 0.1},
                                       kv_capacity_tokens=12))
    assert batch_cost(cost, 2, 4, 3)[1] == pytest.approx(batch_cost(_cost(), 2, 4, 3)[1], rel=1e-12)

def test_one_output_token_is_prefill_only():
    assert batch_cost(_cost(), 1, 4, 1)[1] == pytest.approx(1 + 1e-4 * 10 + 0.5, rel=1e-12)


def test_bins_sum_count_over_batch_times_batch_energy():
    spec = BinSpec((4, 8), (2, 4))
    inp = np.array([3, 4, 5, 9])
    out = np.array([2, 2, 3, 1])
    est = paper_estimate(bin_arrays(inp, out, spec), _cost(12), max_batch=4)
    # (3,2) and (4,2) -> bin (4,2): B = 12 // 6 = 2; (5,3) -> bin (8,4): B = 12 // 12 = 1; (9,1) excluded
    e42, e84 = batch_cost(_cost(), 2, 4, 2)[1], batch_cost(_cost(), 1, 8, 4)[1]
    assert est.energy_j == pytest.approx(2 / 2 * e42 + 1 / 1 * e84, rel=1e-12)
    assert (est.excluded, est.clamped, est.unfit, est.binned, est.estimated) == (1, 0, 0, 3, 3)
    assert [(b.input_tokens, b.output_tokens, b.count, b.batch) for b in est.bins] == [(4, 2, 2, 2), (8, 4, 1, 1)]


def test_partial_batches_are_charged_pro_rata():
    spec = BinSpec((4,), (2,))
    est = paper_estimate(bin_arrays(np.array([4]), np.array([2]), spec), _cost(12), max_batch=4)
    assert est.energy_j == pytest.approx(batch_cost(_cost(), 2, 4, 2)[1] / 2, rel=1e-12)


def test_bin_edges_are_ceilings():
    spec = BinSpec((4, 8), (2, 4))
    est = paper_estimate(bin_arrays(np.array([4, 5]), np.array([2, 3]), spec), _cost(100), max_batch=4)
    assert [(b.input_tokens, b.output_tokens) for b in est.bins] == [(4, 2), (8, 4)]


def test_clamp_moves_out_of_range_into_last_bins():
    spec = BinSpec((4, 8), (2, 4), out_of_range="clamp")
    est = paper_estimate(bin_arrays(np.array([9]), np.array([1]), spec), _cost(12), max_batch=4)
    assert (est.excluded, est.clamped) == (0, 1)
    assert [(b.input_tokens, b.output_tokens, b.batch) for b in est.bins] == [(8, 2, 1)]  # 12 // 10


def test_bins_that_do_not_fit_are_reported_not_priced():
    spec = BinSpec((4, 8), (2, 4))
    est = paper_estimate(bin_arrays(np.array([4, 8]), np.array([2, 4]), spec), _cost(6), max_batch=4)
    assert est.unfit == 1 and est.estimated == 1
    assert est.energy_j == pytest.approx(batch_cost(_cost(), 1, 4, 2)[1], rel=1e-12)
    assert est.to_dict()["bins"][1]["batch"] == 0
