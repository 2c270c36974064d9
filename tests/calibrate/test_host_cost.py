"""The serving loop's host-overhead measurement and its fit (torch-free, no GPU)."""

from __future__ import annotations

import itertools

import pytest

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.profile import HostOverhead
from tokenjoule.calibrate.sweep.host_cost import (
    binned_points,
    fit_host_overhead,
    measure_serving_host,
    synthetic_requests,
)
from tokenjoule.calibrate.validate.replay import PrefillFirstScheduler
from tokenjoule.kernels.block_manager import BlockManager
from tokenjoule.kernels.scheduler import Scheduler


class TokenRunner:
    """A model runner that samples token 0 for every row that samples, instantly."""

    def __init__(self, blocks: int = 4096) -> None:
        self.block_manager = BlockManager(blocks, 16)
        self.iterations = 0

    def run(self, batch):
        self.iterations += 1
        done = sum(seq.num_computed_tokens + n == seq.num_tokens for seq, n in batch.prefill)
        return [0] * (done + len(batch.decode))


def _ticking_clock(step_s: float):
    ticks = itertools.count()
    return lambda: next(ticks) * step_s


@pytest.mark.parametrize("policy", [PrefillFirstScheduler, Scheduler])
def test_serving_measurement_times_both_host_phases_of_every_iteration(policy):
    runner = TokenRunner()
    free = runner.block_manager.num_free_blocks
    scheduler = policy(runner.block_manager, 8, 512)
    requests = synthetic_requests(12, seed=3, max_prompt=64, max_output=20)
    rows = measure_serving_host(runner, scheduler, requests, vocab_size=100, clock=_ticking_clock(1e-3))
    assert len(rows) == runner.iterations and not scheduler.has_work
    assert runner.block_manager.num_free_blocks == free  # every request finished and freed its blocks
    # four clock reads per iteration: schedule (1 tick) and commit (1 tick) are timed, the run between is not
    assert all(r["host_s"] == pytest.approx(2e-3) for r in rows)
    assert max(r["seqs"] for r in rows) == 8 and any(r["prefill_seqs"] for r in rows)
    assert sum(r["seqs"] - r["prefill_seqs"] for r in rows) == sum(o - 1 for _, o in requests)  # one decode a token
    with pytest.raises(RuntimeError, match="idle"):
        busy = policy(runner.block_manager, 8, 512)
        busy.waiting.append(object())
        measure_serving_host(runner, busy, requests, vocab_size=100)


def test_binned_points_are_medians_per_kind_and_size():
    rows = [{"seqs": n, "prefill_seqs": 0, "host_s": 1e-4 * n} for n in (3, 3, 3, 100)]
    rows += [{"seqs": 5, "prefill_seqs": 2, "host_s": 7e-4}]
    points = binned_points(rows)
    assert [(p["seqs"], p["prefill_seqs"], p["iterations"]) for p in points] == [(3, 0, 3), (100, 0, 1), (5, 2, 1)]
    assert points[0]["median_s"] == pytest.approx(3e-4)


def test_fit_recovers_known_coefficients():
    truth = HostOverhead(20e-6, 3e-6, per_prefill_seq_s=40e-6)
    points = [{"seqs": n, "prefill_seqs": p, "median_s": truth.seconds(n, p)}
              for n, p in ((1, 0), (8, 0), (64, 0), (256, 0), (4, 4), (20, 2))]
    fitted = fit_host_overhead(points)
    for n, p in ((1, 0), (128, 0), (16, 8)):
        assert fitted.seconds(n, p) == pytest.approx(truth.seconds(n, p), rel=1e-6)
    assert fitted.points[0]["seqs"] == 1 and "NNLS" in fitted.method


def test_fit_needs_three_points_and_coefficients_stay_non_negative():
    with pytest.raises(ValueError, match=">= 3 host points"):
        fit_host_overhead([{"seqs": 1, "median_s": 1e-5}, {"seqs": 2, "median_s": 2e-5}])
    falling = [{"seqs": n, "median_s": 1e-3 / n} for n in (1, 2, 4, 8)]
    fitted = fit_host_overhead(falling)
    assert min(fitted.per_iteration_s, fitted.per_seq_s, fitted.per_prefill_seq_s) >= 0
    with pytest.raises(ProfileError, match="must be >= 0"):
        HostOverhead(-1e-6, 0.0)


def test_host_overhead_round_trips_and_reads_older_files():
    host = HostOverhead(1e-5, 2e-6, 3e-9, ({"seqs": 4, "prefill_seqs": 1, "median_s": 3e-5},), "m", 5e-6)
    assert HostOverhead.from_dict(host.to_dict()) == host
    older = {"per_iteration_s": 1e-5, "per_seq_s": 2e-6, "per_seq_sq_s": 0.0, "points": [], "method": "m"}
    assert HostOverhead.from_dict(older).per_prefill_seq_s == 0.0


def test_calibration_measures_host_overhead_on_one_gpu_and_skips_it_under_tp():
    from types import SimpleNamespace

    from tokenjoule.calibrate.pipeline import CalibrationConfig, serving_host_overhead
    from tokenjoule.kernels.spec import ModelSpec

    wrapped = SimpleNamespace(runner=TokenRunner(), release=lambda: None)
    spec = ModelSpec.from_name("llama-3.1-8b")
    small = CalibrationConfig(max_num_seqs=16, max_num_batched_tokens=4096)
    host = serving_host_overhead(wrapped, spec, small)
    assert host is not None and max(p["seqs"] for p in host.points) >= 8 and "synthetic requests" in host.method
    # tensor parallel: the other ranks only follow rank 0's runner commands, so serving on rank 0 alone would hang
    assert serving_host_overhead(wrapped, spec, CalibrationConfig(gpu_indices=(0, 1))) is None
    assert serving_host_overhead(SimpleNamespace(release=lambda: None), spec, small) is None  # no model runner
