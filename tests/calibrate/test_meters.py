import logging
import sys

import pytest
from fake_pynvml import make_pynvml

from tokenjoule.calibrate.measure.fake import FakeMeter, ReplayMeter
from tokenjoule.calibrate.measure.meters import Measurement, NVMLMeter, TimeOnlyMeter, infer_update_period_s, make_meter
from tokenjoule.calibrate.measure.nvml import (
    NVMLDevices,
    NVMLNotSupportedError,
    NVMLPermissionError,
    NVMLUnavailableError,
)


def test_window_energy_is_counter_difference(timeline, fake_meter):
    timeline.idle(0.063)  # to t=0.063; the counter last ticked at 0.037
    fake_meter.begin_window("w")
    timeline.run(1.0, 400.0)  # to t=1.063; last tick at 1.037
    m = fake_meter.end_window("w")
    # counter covers 0.037..1.037: 0.026 s idle at 60 W, then 0.974 s at 400 W
    assert m.time_s == pytest.approx(1.0)
    assert m.energy_j == pytest.approx(0.026 * 60 + 0.974 * 400)
    assert m.per_gpu_energy_j == {0: pytest.approx(m.energy_j)}
    assert m.power_w == pytest.approx(m.energy_j / 1.0)


def test_energy_sums_over_gpus(timeline):
    meter = FakeMeter(timeline, (0, 1), update_period_s=0.0)
    meter.begin_window("w")
    timeline.run(0.5, 300.0)
    m = meter.end_window("w")
    assert m.per_gpu_energy_j == {0: pytest.approx(150.0), 1: pytest.approx(150.0)}
    assert m.energy_j == pytest.approx(300.0)


@pytest.mark.filterwarnings("ignore:window")
def test_duplicate_and_unknown_keys_raise(fake_meter):
    fake_meter.begin_window("a")
    with pytest.raises(ValueError, match="already open"):
        fake_meter.begin_window("a")
    with pytest.raises(ValueError, match="not begun"):
        fake_meter.end_window("b")
    fake_meter.end_window("a")
    with pytest.raises(ValueError, match="not begun"):
        fake_meter.end_window("a")


def test_short_window_warns_with_remedy(timeline, fake_meter):
    fake_meter.begin_window("short")
    timeline.run(0.02, 300.0)
    with pytest.warns(UserWarning, match="measure_aligned"):
        fake_meter.end_window("short")


def test_windows_sync_at_both_ends(timeline):
    calls = []
    meter = TimeOnlyMeter((0,), reason="test", clock=timeline.clock, sync=lambda: calls.append(timeline.now_s))
    meter.begin_window("w")
    timeline.idle(0.5)
    meter.end_window("w")
    assert calls == [0.0, 0.5]


def test_measurement_power_none_without_energy():
    assert Measurement(1.0, None).power_w is None
    assert Measurement(0.0, 5.0).power_w is None


def test_no_nvml_gives_time_only_meter_with_logged_reason(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(init_error=12))
    with caplog.at_level(logging.WARNING):
        meter = make_meter([0], sync=lambda: None)
    assert isinstance(meter, TimeOnlyMeter) and not meter.has_energy
    assert "Library" in caplog.text or "NVML" in caplog.text
    meter.begin_window("w")
    m = meter.end_window("w")
    assert m.energy_j is None and m.per_gpu_energy_j is None and m.time_s >= 0
    assert meter.metadata()["energy"] == "none" and "NVML" in meter.metadata()["reason"]


def test_missing_pynvml_package_gives_time_only(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    meter = make_meter([0], sync=lambda: None)
    assert isinstance(meter, TimeOnlyMeter)
    assert "nvidia-ml-py" in meter.reason


def test_unsupported_energy_counter_gives_time_only(monkeypatch):
    nv = make_pynvml(energy_error=3)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    meter = make_meter([0], sync=lambda: None)
    assert isinstance(meter, TimeOnlyMeter)
    assert "does not expose" in meter.reason
    assert nv.calls[-1] == "shutdown"


def test_nvml_meter_converts_millijoules(monkeypatch):
    counter = {0: 1_000_000, 1: 2_000_000}
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(energy_mj=lambda i: counter[i]))
    meter = make_meter([0, 1], sync=lambda: None)
    assert isinstance(meter, NVMLMeter)
    meter._period_known = True  # skip inference: the counter here only moves when the test moves it
    meter.begin_window("w")
    counter[0] += 1500
    counter[1] += 2500
    m = meter.end_window("w")
    assert m.per_gpu_energy_j == {0: pytest.approx(1.5), 1: pytest.approx(2.5)}
    assert m.energy_j == pytest.approx(4.0)


@pytest.mark.parametrize("code, error", [(3, NVMLNotSupportedError), (4, NVMLPermissionError),
                                         (9, NVMLUnavailableError)])
def test_nvml_errors_map_to_meter_errors(code, error):
    devices = NVMLDevices([0], nvml=make_pynvml(energy_error=code))
    with pytest.raises(error) as info:
        devices.total_energy_mj(0)
    assert info.value.__cause__ is not None


def test_power_instant_falls_back_to_power_usage():
    devices = NVMLDevices([0], nvml=make_pynvml(power_instant_ok=True))
    assert devices.power_instant_mw(0) == 250_500
    devices = NVMLDevices([0], nvml=make_pynvml(power_instant_ok=False))
    assert devices.power_instant_mw(0) == 240_000
    assert devices.describe(0)["power_limit_mw"] == 700_000
    assert devices.driver_version() == "570.86.15"


def test_infer_update_period():
    now = [0.0]

    def clock():
        now[0] += 0.001
        return now[0]

    period = infer_update_period_s(lambda: int(now[0] / 0.1), clock, poll_s=0.0)
    assert period == pytest.approx(0.1, abs=0.002)
    assert infer_update_period_s(lambda: 7, clock, timeout_s=0.05, poll_s=0.0) is None


def test_replay_meter_returns_recorded_measurements_in_order():
    meter = ReplayMeter.from_rows([{"window": "a", "time_s": 1.0, "energy_j": 10.0},
                                   {"window": "a", "time_s": 2.0, "energy_j": None}])
    meter.begin_window("a")
    assert meter.end_window("a") == Measurement(1.0, 10.0)
    meter.begin_window("a")
    assert meter.end_window("a").energy_j is None
    meter.begin_window("a")
    with pytest.raises(ValueError, match="no recorded measurement"):
        meter.end_window("a")
