import sys
import threading
import time

import pytest
from fake_pynvml import make_pynvml

from tokenjoule.calibrate.measure.aligned import measure_aligned
from tokenjoule.calibrate.measure.fake import FakeMeter
from tokenjoule.calibrate.measure.meters import EnergyMeter, NVMLMeter, Tick, TimeOnlyMeter, make_meter


@pytest.mark.parametrize("phase_s", [0.0, 0.013, 0.037, 0.099])
@pytest.mark.parametrize("step_s, power_w", [(0.004, 350.0), (0.031, 500.0), (0.27, 650.0)])
def test_aligned_energy_is_exact_where_plain_window_is_not(timeline, phase_s, step_s, power_w):
    meter = FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=phase_s)
    timeline.idle(0.5)
    m = measure_aligned(meter, lambda: timeline.run(step_s, power_w), target_s=0.25)
    assert m.energy_per_step_j == pytest.approx(step_s * power_w, rel=1e-9)
    assert m.power_w == pytest.approx(power_w)
    assert m.error_bound == 0.0
    assert m.time_s >= 0.25 and m.steps >= 2
    assert m.step_time_s == pytest.approx(step_s)
    assert m.tick_span_s >= 0.1 - 1e-9


def test_window_extends_until_two_ticks(timeline):
    meter = FakeMeter(timeline, (0,), update_period_s=0.1, phase_s=0.0)
    m = measure_aligned(meter, lambda: timeline.run(0.01, 300.0), target_s=0.01, min_steps=1, warmup_steps=0)
    assert m.time_s >= 0.1  # two ticks need at least one full period inside the window
    assert m.energy_per_step_j == pytest.approx(3.0)


def test_warmup_steps_run_before_window(timeline, fake_meter):
    calls = []
    m = measure_aligned(fake_meter, lambda: (calls.append(1), timeline.run(0.05, 300.0)), warmup_steps=3)
    assert len(calls) == m.steps + 3


def test_time_only_meter_gives_time_and_no_energy(timeline):
    meter = TimeOnlyMeter((0,), reason="no NVML here", clock=timeline.clock, sync=lambda: None)
    m = measure_aligned(meter, lambda: timeline.run(0.02, 300.0), target_s=0.1)
    assert m.energy_per_step_j is None and m.power_w is None and m.error_bound is None
    assert m.step_time_s == pytest.approx(0.02)


def test_continuous_counter_uses_window(timeline):
    meter = FakeMeter(timeline, (0,), update_period_s=0.0)
    m = measure_aligned(meter, lambda: timeline.run(0.02, 300.0), target_s=0.1)
    assert m.energy_per_step_j == pytest.approx(6.0) and m.error_bound == 0.0


class _UncertainTicks(FakeMeter):
    """Ticks seen up to 2 ms late (as a polling thread would see them)."""

    def ticks(self):
        return [Tick(t.time_s + 0.002, t.gpu, t.energy_j, 0.002) for t in super().ticks()]


def test_error_bound_reflects_tick_uncertainty(timeline):
    meter = _UncertainTicks(timeline, (0,), update_period_s=0.1, phase_s=0.05)
    timeline.idle(0.2)
    m = measure_aligned(meter, lambda: timeline.run(0.01, 300.0), target_s=0.3)
    assert m.error_bound == pytest.approx(0.002 / m.tick_span_s)
    assert abs(m.power_w - 300.0) / 300.0 <= m.error_bound + 1e-9


class _SlowReads(FakeMeter):
    """Ticks timed to within `u` s, as a tick poller whose counter reads are slow sees them."""

    u = 0.0077  # two 3 ms energy reads and a poll gap, measured on an H200 host (2026-12-02)

    def ticks(self):
        return [Tick(t.time_s, t.gpu, t.energy_j, self.u) for t in super().ticks()]


def test_window_grows_until_tick_timing_bounds_energy_within_two_percent(timeline):
    meter = _SlowReads(timeline, (0,), update_period_s=0.1, phase_s=0.03)
    m = measure_aligned(meter, lambda: timeline.run(0.01, 300.0), target_s=0.15)
    # two ticks 0.1 s apart would bound it at 7.7%: the window runs on until the ticks span >= u / 2%
    assert m.error_bound <= 0.02 and m.tick_span_s >= _SlowReads.u / 0.02
    assert m.time_s < 0.15 + _SlowReads.u / 0.02 + 0.1  # and not much longer than that needs


def test_large_bound_warns(timeline):
    meter = _SlowReads(timeline, (0,), update_period_s=0.1)
    meter.u = 0.02
    with pytest.warns(UserWarning, match="error"):  # 1 s of ticks would be needed; max_s stops it first
        m = measure_aligned(meter, lambda: timeline.run(0.01, 300.0), target_s=0.15, max_s=0.5)
    assert m.error_bound > 0.02 and 0.5 <= m.time_s < 0.52


class _NoTicks(EnergyMeter):
    update_period_s = 0.1

    def read_energy_j(self):
        return {0: 0.0}


def test_missing_ticks_leave_energy_none(timeline):
    meter = _NoTicks((0,), clock=timeline.clock, sync=lambda: None)
    with pytest.warns(UserWarning, match="no two energy-counter ticks"):
        m = measure_aligned(meter, lambda: timeline.run(0.05, 300.0), target_s=0.1, max_s=0.5)
    assert m.energy_per_step_j is None and m.time_s >= 0.5


def test_nvml_tick_recorder_with_mocked_pynvml(monkeypatch):
    """Real thread, real clock: a 300 W counter stepping every 20 ms is read back within the method's bound."""
    start = time.perf_counter()
    period, power = 0.02, 300.0

    def energy_mj(index):
        ticks = int((time.perf_counter() - start) / period)
        return int(power * ticks * period * 1000)

    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(energy_mj=energy_mj))
    meter = make_meter([0], sync=lambda: None)
    assert isinstance(meter, NVMLMeter)
    assert meter.update_period_s == pytest.approx(period, rel=0.3)
    m = measure_aligned(meter, lambda: time.sleep(0.003), target_s=0.15)
    assert m.error_bound is not None and m.tick_span_s >= period
    assert abs(m.power_w - power) / power <= m.error_bound + 0.02
    meter.close()
    assert not any(t.name == "tokenjoule-tick-recorder" for t in threading.enumerate())


def test_continuous_nvml_counter_is_read_directly(monkeypatch):
    start = time.perf_counter()
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(
        energy_mj=lambda i: int(200.0 * (time.perf_counter() - start) * 1000)))  # 200 W: a mJ every 5 us
    meter = make_meter([0], sync=lambda: None)
    assert meter.update_period_s is None
    m = measure_aligned(meter, lambda: time.sleep(0.002), target_s=0.05)
    assert m.tick_span_s is None and m.error_bound == 0.0
    assert m.power_w == pytest.approx(200.0, rel=0.05)
    meter.close()
