"""Edge-aligned windows: a one-off window's energy without the counter's quantization at its edges."""

from __future__ import annotations

import pytest

from tokenjoule.calibrate.measure.edges import close_at_tick, open_at_tick
from tokenjoule.calibrate.measure.fake import FakeMeter, FakeTimeline
from tokenjoule.calibrate.measure.meters import TimeOnlyMeter

WORK_S, WORK_W, IDLE_W = 1.05, 300.0, 100.0


def _measure(meter: FakeMeter, timeline: FakeTimeline, before_w: float):
    timeline.run(0.37, before_w)  # whatever ran before: its power must not leak into the window
    window = open_at_tick(meter, timeline.idle)
    timeline.run(WORK_S, WORK_W)
    return close_at_tick(meter, window, timeline.idle)


@pytest.mark.parametrize("phase", [0.0, 0.013, 0.049, 0.081, 0.0999])
@pytest.mark.parametrize("before_w", [IDLE_W, 650.0])
def test_aligned_energy_is_the_work_energy_within_its_bound(phase, before_w):
    timeline = FakeTimeline(idle_power_w=IDLE_W)
    meter = FakeMeter(timeline, update_period_s=0.1, phase_s=phase)
    result = _measure(meter, timeline, before_w)
    truth = WORK_S * WORK_W
    assert result.aligned
    assert result.time_s == pytest.approx(WORK_S)
    assert abs(result.energy_j - truth) <= result.bound_j + 1e-9
    assert result.bound_j < 0.005 * truth
    assert result.idle_power_w == pytest.approx(IDLE_W)
    assert 0 <= result.lead_s < 0.01 and 0 <= result.trail_s <= 0.1 + 1e-9


def test_plain_difference_misses_up_to_a_period_of_energy_that_the_aligned_window_keeps():
    """The end read holds the energy up to the last step: the work's last 99 ms are missing from the raw difference."""
    timeline = FakeTimeline(idle_power_w=IDLE_W)
    meter = FakeMeter(timeline, update_period_s=0.1, phase_s=0.0)
    timeline.run(0.0005, IDLE_W)
    window = open_at_tick(meter, timeline.idle)
    timeline.run(1.099 - (timeline.now_s % 0.1), WORK_W)  # ends just before a counter step
    result = close_at_tick(meter, window, timeline.idle)
    truth = result.time_s * WORK_W
    assert result.raw_energy_j < truth - 0.08 * WORK_W
    assert result.energy_j == pytest.approx(truth, abs=result.bound_j + 1e-9)


def test_two_gpus_are_aligned_each_on_its_own_steps():
    timeline = FakeTimeline(idle_power_w=IDLE_W)
    meter = FakeMeter(timeline, gpu_indices=(0, 1), update_period_s=0.1, phase_s=0.037)
    result = _measure(meter, timeline, 400.0)
    assert result.aligned
    assert result.energy_j == pytest.approx(2 * WORK_S * WORK_W, abs=result.bound_j + 1e-9)


def test_a_continuous_counter_is_the_plain_difference():
    timeline = FakeTimeline(idle_power_w=IDLE_W)
    meter = FakeMeter(timeline, update_period_s=0.0)
    result = _measure(meter, timeline, 500.0)
    assert not result.aligned and result.bound_j is None
    assert result.energy_j == pytest.approx(WORK_S * WORK_W) == result.raw_energy_j


def test_a_counter_that_never_steps_falls_back_to_the_plain_difference():
    class Stuck(FakeMeter):
        def read_energy_j(self):
            return dict.fromkeys(self.gpu_indices, 5.0)

        def ticks(self):
            return []

    timeline = FakeTimeline(idle_power_w=IDLE_W)
    meter = Stuck(timeline, update_period_s=0.1)
    result = _measure(meter, timeline, IDLE_W)
    assert not result.aligned and result.energy_j == 0.0
    assert result.time_s == pytest.approx(WORK_S)


def test_a_time_only_meter_has_no_energy():
    timeline = FakeTimeline()
    meter = TimeOnlyMeter((0,), "no NVML", clock=timeline.clock, sync=lambda: None)
    window = open_at_tick(meter, timeline.idle)
    timeline.run(0.5, WORK_W)
    result = close_at_tick(meter, window, timeline.idle)
    assert result.energy_j is None and not result.aligned
    assert result.time_s == pytest.approx(0.5)
