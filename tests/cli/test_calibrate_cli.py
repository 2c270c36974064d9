import json
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenjoule.calibrate import gpu_run
from tokenjoule.calibrate.measure import machine
from tokenjoule.calibrate.measure.fake import FakeMeter, FakeRunner, FakeTimeline
from tokenjoule.calibrate.measure.nvml import MeterError
from tokenjoule.calibrate.profile import load_profile
from tokenjoule.cli import app

TOY = Path(__file__).parent.parent / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"
runner = CliRunner()


def test_refuses_cleanly_without_a_gpu(tmp_path, monkeypatch):
    def no_gpu(indices):
        raise MeterError("calibrate needs a CUDA GPU; torch.cuda.is_available() is False on this machine")

    monkeypatch.setattr(machine, "check_device", no_gpu)
    result = runner.invoke(app, ["calibrate", "--model", "llama-3.1-8b", "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: calibrate needs a CUDA GPU; torch.cuda.is_available() is False on this machine"]
    assert not list(tmp_path.iterdir())


def _pynvml_without_library() -> types.SimpleNamespace:
    class NVMLError(Exception):
        value = 12  # NVML_ERROR_LIBRARY_NOT_FOUND

    def init():
        raise NVMLError("NVML Shared Library Not Found")

    return types.SimpleNamespace(NVMLError=NVMLError, NVML_ERROR_LIBRARY_NOT_FOUND=12, nvmlInit=init)


def test_check_device_refuses_without_cuda_or_nvml(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        machine.check_device((0,))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", _pynvml_without_library())
    with pytest.raises(RuntimeError, match="needs NVML's energy counter: .*Library"):
        machine.check_device((0,))


def test_unknown_model_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # past check_device (stubbed here), calibrating assumes torch
    monkeypatch.setattr(machine, "check_device", lambda indices: None)
    result = runner.invoke(app, ["calibrate", "--model", "gpt-9", "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and "unknown model 'gpt-9'" in result.stderr


def test_calibrate_runs_and_prints_summary(tmp_path, monkeypatch):
    toy = load_profile(TOY)

    def fake_run(model, engine, mode, out, quick, **kwargs):
        from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
        from tokenjoule.calibrate.sweep.grid import GridConfig
        from tokenjoule.kernels.spec import load_spec

        timeline = FakeTimeline(toy.idle_power_w)
        meter = FakeMeter(timeline, (0,), 0.1)
        fake_runner = FakeRunner(timeline, toy.cost, toy.kv_capacity_tokens)
        config = CalibrationConfig(engine=engine, mode=mode, grid=GridConfig.quick() if quick else GridConfig())
        return calibrate(load_spec(model), config, out, runner=fake_runner, meter=meter,
                         wait=timeline.idle, progress=False)

    monkeypatch.setattr(machine, "check_device", lambda indices: None)
    monkeypatch.setattr(gpu_run, "run_calibration", fake_run)
    out = tmp_path / "p.json"
    result = runner.invoke(app, ["calibrate", "--model", "llama-3.1-8b", "--engine", "hf", "--mode", "eager",
                                 "--out", str(out), "--quick", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["engine"] == "hf" and data["mode"] == "eager" and data["raw_path"] == "p.raw.parquet"
    assert load_profile(out).engine == "hf"


def test_calibrate_gpu_checks_models_then_the_gpu_and_writes_nothing_without_one(tmp_path, monkeypatch):
    checked = []

    def no_gpu(indices):
        checked.append(indices)
        raise MeterError("calibrate needs a CUDA GPU; torch.cuda.is_available() is False on this machine")

    monkeypatch.setattr(machine, "check_device", no_gpu)
    out = tmp_path / "ops"
    bad = runner.invoke(app, ["calibrate-gpu", "--out-dir", str(out), "--models", "llama-3.1-8b,nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.stderr and checked == []
    result = runner.invoke(app, ["calibrate-gpu", "--out-dir", str(out), "--gpu", "1"])
    assert result.exit_code == 2 and checked == [(1,)]
    assert result.stderr.strip().splitlines() == [
        "error: calibrate needs a CUDA GPU; torch.cuda.is_available() is False on this machine"]
    assert not out.exists()
