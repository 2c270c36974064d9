import pytest
from fake_pynvml import make_pynvml

from tokenjoule.calibrate.measure.nvml import NVMLDevices
from tokenjoule.calibrate.measure.sampler import PowerSampler, wait_thermal_settled
from tokenjoule.calibrate.measure.timing import summarize, time_fn


def test_summarize_median_and_spread():
    stats = summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert stats.median_s == 3.0 and stats.min_s == 1.0 and stats.n == 5
    assert stats.p10_s == pytest.approx(1.4) and stats.p90_s == pytest.approx(4.6)
    assert stats.spread == pytest.approx(3.2 / 3.0)
    with pytest.raises(ValueError):
        summarize([])


def test_time_fn_warms_up_then_times():
    calls = []
    stats = time_fn(lambda: calls.append(1), warmup=2, repeats=5, use_cuda=False)
    assert len(calls) == 7 and stats.n == 5 and stats.clock == "host"
    with pytest.raises(ValueError):
        time_fn(lambda: None, repeats=0)


def test_power_sampler_reads_all_gpus():
    devices = NVMLDevices([0, 1], nvml=make_pynvml())
    sampler = PowerSampler(devices, interval_s=0.01)
    batch = sampler.read_once()
    assert [s.gpu for s in batch] == [0, 1]
    assert batch[0].power_w == pytest.approx(250.5) and batch[0].temperature_c == 55
    with sampler:
        pass
    samples = sampler.samples()
    assert samples and samples[0].to_row()["sm_clock_mhz"] == 1980


def test_thermal_settling_stops_when_flat():
    now, temps = [0.0], iter([40, 50, 58, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63])

    def load():
        now[0] += 1.0

    spent, temp = wait_thermal_settled(lambda: float(next(temps)), load, window_s=2.0, tolerance_c=1.0,
                                       max_s=60.0, clock=lambda: now[0])
    assert temp == 63 and spent == pytest.approx(5.0)  # 63 at t=5 is within 1 C of 62 at t=3
