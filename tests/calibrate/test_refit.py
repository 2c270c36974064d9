import json

import pytest
from test_sweeps import _setup

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.profile import load_profile, save_profile
from tokenjoule.calibrate.refit import refit_profile
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.cli import main
from tokenjoule.kernels.spec import ModelSpec


def _calibrated(toy_profile, tmp_path):
    timeline, meter, runner = _setup(toy_profile)
    path = tmp_path / "h100.json"
    calibrate(ModelSpec.from_name("llama-3.1-8b"), CalibrationConfig(grid=GridConfig(settle_s=2.0)), path,
              runner=runner, meter=meter, wait=timeline.idle, progress=False)
    return path


def test_refit_reproduces_the_fit_and_keeps_measured_fields(toy_profile, tmp_path):
    path = _calibrated(toy_profile, tmp_path)
    original = load_profile(path)
    # spoil the curves on disk: a refit must bring them back from the raw file alone
    data = json.loads(path.read_text())
    data["latency"]["knot_values"] = [1.0] * len(data["latency"]["knot_values"])
    path.write_text(json.dumps(data))
    refitted = refit_profile(path)
    assert refitted.latency == original.latency and refitted.energy == original.energy
    assert refitted.kv_capacity_tokens == original.kv_capacity_tokens and refitted.date == original.date
    assert "refitted from h100.raw.parquet" in refitted.notes


def test_refit_keeps_a_measured_host_overhead_as_it_is(toy_profile, tmp_path):
    import dataclasses

    from tokenjoule.calibrate.profile import HostOverhead

    path = _calibrated(toy_profile, tmp_path)
    host = HostOverhead(1e-5, 2e-6, 3e-9, ({"seqs": 8, "prefill_seqs": 0, "median_s": 4e-5},), "an older form")
    save_profile(dataclasses.replace(load_profile(path), host_overhead=host), path)
    assert refit_profile(path).host_overhead == host


def test_refit_cli_writes_and_refuses_without_raw(toy_profile, tmp_path, capsys):
    path = _calibrated(toy_profile, tmp_path)
    out = tmp_path / "refit.json"
    assert main(["profile", "refit", str(path), "--out", str(out)]) == 0
    assert load_profile(out).latency == load_profile(path).latency
    (tmp_path / "h100.raw.parquet").unlink()
    assert main(["profile", "refit", str(path)]) == 2
    assert "raw sweep file" in capsys.readouterr().err
    with pytest.raises(ProfileError, match="raw_path"):
        import dataclasses
        save_profile(dataclasses.replace(load_profile(path), raw_path=None), tmp_path / "noraw.json")
        refit_profile(tmp_path / "noraw.json")
