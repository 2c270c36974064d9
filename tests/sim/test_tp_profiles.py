"""Which profile a `--tp` what-if uses: a measured TP profile of the same setup, else modeled from tp=1.

Synthetic profiles (not measurements) in temporary folders; the shipped folder is redirected to one of them.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from sim_profiles import make_profile
from typer.testing import CliRunner

import tokenjoule.calibrate.profile as profile_mod
import tokenjoule.sim.cli as sim_cli
from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.profile import save_profile
from tokenjoule.cli import app
from tokenjoule.sim.tp_profiles import choose_profile, profiles_by_tp, same_setup

SMALL = ["--synthetic", "n=20,input=256,output=16,rate=20"]
TP1 = make_profile()
TP2 = make_profile(tp=2, lat=(0.006, 6e-6), en=(6.0, 6e-3), idle_power_w=200.0, kv_capacity_tokens=300_000)


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A shipped folder holding a tp=1 profile 'h100-synth' (the default) and its measured tp=2 sibling."""
    folder = tmp_path / "shipped"
    save_profile(TP1, folder / "h100-synth.json")
    save_profile(TP2, folder / "h100x2-synth.json")
    monkeypatch.setattr(profile_mod, "SHIPPED_DIR", folder)
    monkeypatch.setattr(sim_cli, "DEFAULT_PROFILE", "h100-synth")
    return folder


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_same_setup_ignores_tp_only():
    assert same_setup(TP1, TP2)
    for change in ({"engine": "hf"}, {"mode": "eager"}, {"gpu": {**TP1.gpu, "name": "NVIDIA H200"}},
                   {"gpu": {**TP1.gpu, "datasheet": "H200-SXM"}}):
        assert not same_setup(TP1, dataclasses.replace(TP2, **change)), change
    assert not same_setup(TP1, make_profile(model="llama-3.1-70b", tp=2))


def test_default_picks_the_shipped_tp_profile(shipped):
    choice = choose_profile(None, "calibrated", 2, "h100-synth")
    assert choice.profile == TP2 and choice.path.name == "h100x2-synth.json" and not choice.modeled_tp
    assert choice.source == f"measured tp profile {shipped / 'h100x2-synth.json'}"
    one = choose_profile(None, "calibrated", 1, "h100-synth")
    assert one.profile == TP1 and one.source == f"profile {shipped / 'h100-synth.json'}"


def test_no_measured_degree_falls_back_to_modeled(shipped):
    choice = choose_profile("h100-synth", "calibrated", 4, "unused")
    assert choice.profile == TP1 and choice.modeled_tp
    assert choice.source == f"modeled from tp=1 {shipped / 'h100-synth.json'}"


def test_explicit_file_finds_its_sibling_and_skips_strangers(shipped, tmp_path):
    run = tmp_path / "run"
    save_profile(TP1, run / "h200.json")
    save_profile(dataclasses.replace(TP2, mode="eager"), run / "other-mode-x2.json")
    save_profile(make_profile(model="llama-3.2-1b", tp=2), run / "other-model-x2.json")
    (run / "check_tp2.json").write_text(json.dumps({"passed": True}))  # a device run's result file
    (run / "broken.json").write_text("{not json")
    assert choose_profile(str(run / "h200.json"), "calibrated", 2, "unused").modeled_tp is False  # shipped match
    (shipped / "h100x2-synth.json").unlink()
    alone = choose_profile(str(run / "h200.json"), "calibrated", 2, "unused")
    assert alone.modeled_tp and alone.source == f"modeled from tp=1 {run / 'h200.json'}"
    save_profile(TP2, run / "h200x2.json")
    found = choose_profile(str(run / "h200.json"), "calibrated", 2, "unused")
    assert found.path == run / "h200x2.json" and found.source.startswith("measured tp profile ")


def test_the_newest_matching_profile_wins(shipped, tmp_path):
    newer = dataclasses.replace(TP2, date="2026-06-01T00:00:00Z", idle_power_w=210.0)
    save_profile(newer, shipped / "h100x2-synth-rerun.json")
    save_profile(dataclasses.replace(TP2, date="2025-01-01T00:00:00Z"), shipped / "h100x2-synth-old.json")
    assert choose_profile(None, "calibrated", 2, "h100-synth").profile == newer
    by_tp = profiles_by_tp(TP1, sorted(shipped.glob("*.json")))
    assert sorted(by_tp) == [1, 2] and by_tp[2][0] == newer


def test_a_tp_profile_prices_only_its_own_degree(shipped):
    tp2_file = str(shipped / "h100x2-synth.json")
    assert choose_profile(tp2_file, "calibrated", 2, "unused").profile == TP2
    with pytest.raises(ProfileError, match=r"a tp=2 profile cannot price --tp 4"):
        choose_profile(tp2_file, "calibrated", 4, "unused")
    with pytest.raises(ProfileError, match=r"cannot price --tp 1"):
        choose_profile(tp2_file, "calibrated", 1, "unused")


def test_roofline_takes_no_tp_profile(shipped):
    assert choose_profile(None, "roofline", 2, "h100-synth").profile is None
    choice = choose_profile("h100-synth", "roofline-memory", 2, "unused")
    assert choice.profile == TP1 and choice.source is None


def test_missing_default_names_itself(shipped):
    with pytest.raises(ProfileError, match="default profile 'nope' is not installed"):
        choose_profile(None, "calibrated", 2, "nope")


# ---- through the CLI ------------------------------------------------------------------------------------------------
def test_simulate_tp2_uses_the_measured_profile(cli, shipped):
    s = _json(cli("simulate", "--tp", "2", *SMALL, "--json"))
    assert s["tp"] == 2 and s["modeled"] is False and s["profile"].endswith("x tp2")
    assert s["profile_source"] == f"measured tp profile {shipped / 'h100x2-synth.json'}"
    assert s["idle_power_w"] == TP2.idle_power_w and s["kv_capacity_tokens"] == TP2.kv_capacity_tokens


def test_simulate_tp4_is_modeled_and_says_so(cli, shipped):
    s = _json(cli("simulate", "--profile", "h100-synth", "--tp", "4", *SMALL, "--json"))
    assert s["modeled"] is True and s["profile"].endswith("x tp1")
    assert s["profile_source"] == f"modeled from tp=1 {shipped / 'h100-synth.json'}"
    text = cli("simulate", "--tp", "4", *SMALL)
    assert text.exit_code == 0, text.output
    assert "modeled from a tp=1 profile (not measured)" in text.output
    assert "costs: modeled from tp=1" in text.output


def test_simulate_text_and_files_name_the_measured_profile(cli, shipped, tmp_path):
    text = cli("simulate", "--tp", "2", *SMALL, "--out", str(tmp_path / "out"))
    assert text.exit_code == 0, text.output
    assert "costs: measured tp profile" in text.output and "not measured" not in text.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["profile_source"].startswith("measured tp profile ") and summary["modeled"] is False


def test_simulate_tp2_profile_with_tp4_is_one_line(cli, shipped):
    result = cli("simulate", "--profile", str(shipped / "h100x2-synth.json"), "--tp", "4", *SMALL)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "a tp=2 profile cannot price --tp 4" in lines[0]


def test_compare_tp_list_mixes_measured_and_modeled(cli, shipped):
    data = _json(cli("compare", "--profiles", "h100-synth", "--tp", "1,2,4", *SMALL, "--json"))
    cells = {c["config"]["tp"]: c["summary"] for c in data["cells"]}
    assert [cells[k]["modeled"] for k in (1, 2, 4)] == [False, False, True]
    assert cells[1]["profile_source"].startswith("profile ")
    assert cells[2]["profile_source"].startswith("measured tp profile ") and cells[2]["profile"].endswith("x tp2")
    assert cells[4]["profile_source"].startswith("modeled from tp=1 ")
    # without the measured file, tp=2 is modeled, and prices differently from the measured profile
    (shipped / "h100x2-synth.json").unlink()
    modeled2 = _json(cli("simulate", "--profile", "h100-synth", "--tp", "2", *SMALL, "--json"))
    assert modeled2["modeled"] is True and modeled2["profile_source"].startswith("modeled from tp=1 ")
    assert modeled2["energy_total_j"] != pytest.approx(cells[2]["energy_total_j"], rel=1e-3)
