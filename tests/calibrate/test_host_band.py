"""The launch-bound host band: derived from a sweep's repeated windows, carried by the profile, spread by simulate."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.fit_sweep import MIN_BAND_WINDOWS, host_band
from tokenjoule.calibrate.profile import GPUProfile, HostBand, load_profile, save_profile
from tokenjoule.sim.run import SimConfig, host_band_keys, run
from tokenjoule.traces.schema import Trace


def _row(point: str, time_s: float, energy_j: float, kind: str = "decode", status: str = "ok") -> dict:
    return {"point_id": point, "kind": kind, "status": status, "step_time_s": time_s, "energy_per_step_j": energy_j}


def _rows() -> list[dict]:
    rows = []
    for i in range(4):  # 4 points x 3 repeats: ratios to each point's median 0.8, 1, 1.5 (time) and 0.9, 1, 1.2
        rows += [_row(f"p{i}", 0.8 * (i + 1), 0.9 * (i + 1)), _row(f"p{i}", 1.0 * (i + 1), 1.0 * (i + 1)),
                 _row(f"p{i}", 1.5 * (i + 1), 1.2 * (i + 1))]
    rows += [_row("single", 9.0, 9.0), _row("idle", 0.1, 5.0, kind="idle"), _row("idle", 9.0, 50.0, kind="idle"),
             _row("p0", 100.0, 100.0, status="failed")]
    return rows


def test_band_is_the_p10_p90_of_repeated_windows_over_their_point_median():
    band = host_band(_rows())
    ratios_t, ratios_e = [0.8, 1.0, 1.5] * 4, [0.9, 1.0, 1.2] * 4
    assert band.windows == 12 and band.points == 4  # single-window points, idle and failed windows left out
    assert band.time_p10 == pytest.approx(np.percentile(ratios_t, 10))
    assert band.time_p90 == pytest.approx(np.percentile(ratios_t, 90))
    assert band.energy_p10 == pytest.approx(np.percentile(ratios_e, 10))
    assert band.energy_p90 == pytest.approx(np.percentile(ratios_e, 90))


def test_too_few_repeated_windows_give_no_band():
    rows = [r for r in _rows() if r["point_id"] in ("p0", "p1")][: MIN_BAND_WINDOWS - 1]
    assert host_band(rows) is None


def test_a_refit_gives_a_band_to_launch_bound_profiles_only(toy_profile: GPUProfile, tmp_path):
    from test_refit import _calibrated

    from tokenjoule.calibrate.refit import refit_profile
    from tokenjoule.calibrate.sweep.iterations import read_rows

    path = _calibrated(toy_profile, tmp_path)
    profile = load_profile(path)
    assert not profile.launch_bound and refit_profile(path).host_band is None
    expected = host_band(read_rows(tmp_path / profile.raw_path))
    assert expected is not None
    for engine, mode in (("tokenjoule", "eager"), ("hf", "eager")):
        save_profile(dataclasses.replace(profile, engine=engine, mode=mode), path)
        assert refit_profile(path).host_band == expected


def test_the_band_round_trips_and_old_profiles_load_without_it(toy_profile: GPUProfile, tmp_path):
    band = HostBand(0.8, 1.3, 0.9, 1.2, 40, 12)
    banded = dataclasses.replace(toy_profile, mode="eager", host_band=band)
    loaded = load_profile(save_profile(banded, tmp_path / "banded.json"))
    assert loaded.host_band == band
    assert loaded.content_sha256 == dataclasses.replace(banded, host_band=None).content_sha256  # prices unchanged
    assert load_profile(save_profile(toy_profile, tmp_path / "plain.json")).host_band is None
    assert "host_band" not in json.loads((tmp_path / "plain.json").read_text())


@pytest.mark.parametrize("bad", [{"time_p10": 1.2}, {"energy_p90": 0.9}, {"time_p10": float("nan")},
                                 {"energy_p10": 0.0}])
def test_a_band_that_does_not_straddle_the_median_is_refused(toy_profile: GPUProfile, tmp_path, bad):
    data = json.loads(save_profile(toy_profile, tmp_path / "p.json").read_text())
    data["host_band"] = {**HostBand(0.8, 1.3, 0.9, 1.2, 40, 12).to_dict(), **bad}
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="host_band"):
        load_profile(tmp_path / "p.json")


def _trace() -> Trace:
    return Trace.from_columns([0.0, 0.5, 1.0, 8.0], [300, 500, 200, 900], [40, 20, 60, 10], source="t")


def test_simulate_moves_busy_energy_and_busy_time_by_the_band(toy_profile: GPUProfile):
    band = HostBand(0.8, 1.5, 0.9, 1.2, 40, 12)
    config = SimConfig(pue=1.3, host_power_w=100.0)
    s = run(config, _trace(), dataclasses.replace(toy_profile, host_band=band)).summary
    busy_total_j = s["gpu_busy_j"] * 1.3  # the GPU's busy energy with its share of the PUE
    assert s["energy_band_j"] == pytest.approx([s["energy_total_j"] - 0.1 * busy_total_j,
                                                s["energy_total_j"] + 0.2 * busy_total_j])
    u = s["utilization"]
    assert 0 < u < 1  # a gap waits on arrivals: the duration moves by the busy share only
    assert s["duration_band_s"] == pytest.approx([s["duration_s"] * (1 - 0.2 * u), s["duration_s"] * (1 + 0.5 * u)])
    assert s["band_source"].startswith("launch-bound host band: p10-p90 of 40 repeated calibration windows")
    plain = run(config, _trace(), toy_profile).summary
    assert (plain["energy_band_j"], plain["duration_band_s"], plain["band_source"]) == (None, None, None)
    assert plain["energy_total_j"] == s["energy_total_j"]  # the band prices nothing


def test_band_keys_without_a_profile_are_none():
    assert host_band_keys({}, None) == {"energy_band_j": None, "duration_band_s": None, "band_source": None}


def test_simulate_shows_the_band_in_its_table_and_json(toy_profile: GPUProfile, tmp_path):
    from typer.testing import CliRunner

    from tokenjoule.cli import app

    path = save_profile(dataclasses.replace(toy_profile, mode="eager", host_band=HostBand(0.8, 1.5, 0.9, 1.2, 40, 12)),
                        tmp_path / "eager.json")
    args = ["simulate", "--profile", str(path), "--synthetic", "n=20,input=256,output=32,rate=5"]
    table = CliRunner().invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "launch-bound host band" in table.output and "p10-p90" in table.output
    summary = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    lo, hi = summary["energy_band_j"]
    assert lo < summary["energy_total_j"] < hi
