"""The whole pipeline on this package's real engine (tiny model, CPU) with NVML replaced by a 100 W counter."""

import dataclasses
import sys
import time

import pytest
from fake_pynvml import make_pynvml

from tokenjoule.calibrate.measure.meters import NVMLMeter, make_meter
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.sweep.iterations import read_rows
from tokenjoule.kernels.spec import ModelSpec

torch = pytest.importorskip("torch")

POWER_W, PERIOD_S = 100.0, 0.01


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:tick timing bounds")  # a loaded 2-core CI box delays the poller
def test_calibrate_real_engine_on_cpu_with_mocked_nvml(tmp_path, monkeypatch):
    start = time.perf_counter()
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(
        energy_mj=lambda i: int(POWER_W * int((time.perf_counter() - start) / PERIOD_S) * PERIOD_S * 1000)))
    meter = make_meter([0], sync=lambda: None)
    assert isinstance(meter, NVMLMeter)
    spec = dataclasses.replace(ModelSpec.from_name("llama-3.2-1b"), n_layers=2, hidden_size=64, n_heads=4,
                               n_kv_heads=2, head_dim=16, intermediate_size=128, vocab_size=512, dtype="float32")
    grid = GridConfig(prefill_batches=(1, 4), prefill_lengths_tokens=(16, 256), decode_batches=(1, 16),
                      decode_contexts_tokens=(32, 256), mixed=False, target_s=0.03, warmup_steps=1, idle_s=0.05,
                      settle_s=0.0)
    config = CalibrationConfig(engine="tokenjoule", mode="eager", grid=grid, device="cpu", max_num_seqs=16,
                               max_num_batched_tokens=1024)
    profile = calibrate(spec, config, tmp_path / "cpu.json", meter=meter, progress=False)
    meter.close()
    rows = [r for r in read_rows(tmp_path / "cpu.raw.parquet") if r["kind"] != "idle"]
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:  # energy per step = the counter's power x measured step time, within the computed bound
        assert r["energy_per_step_j"] == pytest.approx(POWER_W * r["step_time_s"], rel=r["error_bound"] + 0.05)
    loaded = load_profile(tmp_path / "cpu.json")
    assert loaded.kv_capacity_tokens > 0 and loaded.method["energy"] == "nvml-total-energy"
    assert loaded.gpu["name"] == "NVIDIA H100 80GB HBM3" and loaded.gpu["datasheet"] == "H100-SXM"
    assert loaded.idle_power_w == pytest.approx(POWER_W, rel=0.1)
    assert profile.fit_errors["latency"]["n_points"] == len({r["point_id"] for r in rows})
    assert loaded.gpu["power_limit_w"] == 700.0 and loaded.gpu["driver"] == "570.86.15"
