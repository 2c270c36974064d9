"""Calibration on the CPU: grid size, measurement time of a full sweep, and fit errors under measurement noise.

Runs the real sweep + fit on a FakeRunner whose costs come from the synthetic toy profile, with independent
multiplicative noise on every step's latency and energy, and prints the grid's size, the simulated GPU seconds
the sweep spends measuring (what a real H100 sweep would spend at these costs, excluding model load and
per-point setup), and the cross-validated and mixed-iteration fit errors.

    python3 tests/bench/bench_calibrate_fit.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tokenjoule.calibrate.fit_sweep import fit_rows
from tokenjoule.calibrate.measure.fake import FakeMeter, FakeRunner, FakeTimeline
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.calibrate.sweep.grid import GridConfig, grid_points
from tokenjoule.calibrate.sweep.iterations import run_sweep

TOY = Path(__file__).parent.parent / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"


def main() -> None:
    toy = load_profile(TOY)
    for name, cfg in (("full", GridConfig()), ("quick", GridConfig.quick())):
        for noise in (0.0, 0.01, 0.02):
            rng = np.random.default_rng(0)

            def noisy(shape, noise=noise, rng=rng):
                t, e = toy.cost(shape)
                return t * (1 + noise * rng.standard_normal()), e * (1 + noise * rng.standard_normal())

            timeline = FakeTimeline(toy.idle_power_w)
            meter = FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=0.03)
            runner = FakeRunner(timeline, noisy, toy.kv_capacity_tokens)
            with tempfile.TemporaryDirectory() as tmp:
                rows = run_sweep(runner, meter, cfg, Path(tmp) / "raw.parquet", max_num_batched_tokens=16384,
                                 max_num_seqs=512, wait=timeline.idle, progress=False)
            n_points = len(grid_points(cfg, 16384, toy.kv_capacity_tokens, 512))
            errs = fit_rows(rows)["fit_errors"]
            lat, en = errs["latency"], errs["energy"]
            print(f"{name:5s} grid: {n_points:3d} points, {timeline.now_s:6.1f} s simulated measuring "
                  f"(settle {cfg.settle_s:.0f} s incl.), noise {noise:.0%}: latency CV median/p95 "
                  f"{lat['cv_median']:.2%}/{lat['cv_p95']:.2%} mixed {lat['mixed_median']:.2%}/{lat['mixed_p95']:.2%}"
                  f"; energy CV {en['cv_median']:.2%}/{en['cv_p95']:.2%} mixed "
                  f"{en['mixed_median']:.2%}/{en['mixed_p95']:.2%}")


if __name__ == "__main__":
    main()
