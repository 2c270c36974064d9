"""Accounting pieces: the binned timeline, the power series, carbon inputs, the Pareto front, TOML grids."""

from __future__ import annotations

import numpy as np
import pytest

from tokenjoule.sim.accounting import EnergyTimeline, energy_breakdown, load_carbon_csv, pick_bin_s
from tokenjoule.sim.compare import load_grid
from tokenjoule.sim.report import pareto_front
from tokenjoule.sim.run import SimConfig, run


def test_timeline_splits_an_interval_by_time():
    tl = EnergyTimeline(1.0)
    tl.add(0.5, 2.0, 100.0)  # 0.5 s in bin 0, 1 s in bin 1, 0.5 s in bin 2
    assert tl.busy_s == pytest.approx([0.5, 1.0, 0.5])
    assert tl.busy_j == pytest.approx([25.0, 50.0, 25.0])


def test_power_timeline_integrates_to_the_gpu_total(toy_profile, tiny_trace):
    r = run(SimConfig(replicas=2), tiny_trace, toy_profile)
    starts, power = r.power_timeline
    span = np.clip(r.summary["duration_s"] - starts, 0, starts[1] - starts[0])
    assert float((power * span).sum()) == pytest.approx(r.summary["gpu_busy_j"] + r.summary["gpu_idle_j"])


def test_pick_bin_s_divides_an_hour():
    for span in (0.5, 100, 3600, 86400, 1e7):
        width = pick_bin_s(span)
        assert 3600 % width == 0 and (span / width <= 2000 or width == 3600)


def test_hourly_carbon_weights_by_when_energy_is_used():
    starts = np.array([0.0, 1800.0, 3600.0, 5400.0])
    power = np.array([100.0, 100.0, 300.0, 300.0])
    gpu_j = float((power * 1800).sum())
    b = energy_breakdown(gpu_j, 0.0, 7200.0, 1, 0.0, 1.0, carbon_hourly=(100.0, 500.0),
                         timeline_w=(starts, power))
    expected_kg = (200 * 1800 / 3.6e6 * 100 + 600 * 1800 / 3.6e6 * 500) / 1000
    assert b.carbon_kg == pytest.approx(expected_kg)


def test_carbon_csv(tmp_path):
    path = tmp_path / "grid.csv"
    path.write_text("hour,g_co2_per_kwh\n0,400\n1,350.5\n")
    assert load_carbon_csv(path).values == (400.0, 350.5)
    path.write_text("hour,intensity\n0,abc\n")
    with pytest.raises(ValueError, match="row 2"):
        load_carbon_csv(path)
    path.write_text("hour,intensity\n")
    with pytest.raises(ValueError, match="no data rows"):
        load_carbon_csv(path)


def test_pareto_front():
    assert pareto_front([1, 2, 3, 1.5], [3, 2, 1, 3.5]) == [0, 1, 2]


def test_grid_cells(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text('[grid]\npolicy = ["static", "continuous"]\nreplicas = [1, 2]\n[base]\nmax_batch = 4\n'
                    'profile = "p.json"\n')
    cells = load_grid(path).cells()
    assert [c.label for c in cells] == ["static, 1 replica", "static, 2 replicas", "continuous, 1 replica",
                                        "continuous, 2 replicas"]
    assert all(c.profile == "p.json" and c.config.max_batch == 4 for c in cells)
    path.write_text("[base]\nmax_bach = 4\n")
    with pytest.raises(ValueError, match="max_bach"):
        load_grid(path)


def _split_one_by_one(bin_s, intervals):
    """The timeline's arithmetic written out: each interval split by time over its bins, added in turn."""
    busy_s, busy_j = {}, {}
    for start, time_s, energy_j in intervals:
        first, last = int(start // bin_s), int((start + time_s) // bin_s)
        for b in range(first, last + 1):
            overlap = time_s if first == last else min(start + time_s, (b + 1) * bin_s) - max(start, b * bin_s)
            if first == last or overlap > 0.0:
                busy_s[b] = busy_s.get(b, 0.0) + overlap
                busy_j[b] = busy_j.get(b, 0.0) + (energy_j if first == last else energy_j * overlap / time_s)
    return busy_s, busy_j


def test_timeline_bins_hold_the_sums_of_adding_each_interval_in_turn(monkeypatch):
    import random

    import tokenjoule.sim.accounting as accounting

    monkeypatch.setattr(accounting, "FILL_EVERY", 3 * 97)  # fill the bins many times along the way
    rng = random.Random(3)
    intervals = [(rng.uniform(0, 500), rng.choice([rng.uniform(0, 0.05), rng.uniform(0, 40), 0.0]),
                  rng.uniform(0, 900)) for _ in range(5_000)]
    tl = EnergyTimeline(5.0)
    for interval in intervals:
        tl.add(*interval)
    busy_s, busy_j = _split_one_by_one(5.0, intervals)
    assert {b: tl.busy_s[b] for b in busy_s} == busy_s  # exactly: the same additions in the same order
    assert {b: tl.busy_j[b] for b in busy_j} == busy_j
    assert set(np.flatnonzero(tl.busy_s)) <= set(busy_s)
