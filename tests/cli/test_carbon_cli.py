"""`--carbon` by region name on simulate, and `project --pue/--host-power-w/--carbon`: the arithmetic and the errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from test_trust import one_line_error
from typer.testing import CliRunner

from tokenjoule.cli import app
from tokenjoule.sim import grid_intensity

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
SMALL = ["--profile", TOY, "--synthetic", "n=30,input=256,output=16,rate=20"]
needs_codecarbon = pytest.mark.skipif(importlib.util.find_spec("codecarbon") is None,
                                      reason="needs the carbon extra: pip install 'tokenjoule[carbon]'")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def _json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def trace_csv(tmp_path) -> str:
    path = tmp_path / "t.csv"
    rows = [f"{0.5 * i},{100 + 37 * i},{5 + i}" for i in range(40)]
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    return str(path)


# simulate --carbon REGION


@needs_codecarbon
@pytest.mark.parametrize("name, region", [("DE", "DEU"), ("FRA", "FRA"), ("gcp:europe-west1", "gcp:europe-west1")])
def test_simulate_prices_carbon_at_the_regions_intensity_and_records_it(name, region, tmp_path):
    want = grid_intensity.region_intensity(name).g_per_kwh
    out = tmp_path / "run"
    s = _json("simulate", *SMALL, "--carbon", name, "--out", str(out))
    assert s["carbon_g_per_kwh"] == want
    assert s["kg_co2e"] == pytest.approx(s["kwh"] * want / 1000.0, rel=1e-12)
    assert s["carbon_source"].startswith("codecarbon 3.3.2 data/") and f": {region} (" in s["carbon_source"]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["config"]["carbon_g_per_kwh"] == want and run_info["carbon_source"] == s["carbon_source"]


@needs_codecarbon
def test_simulate_table_names_the_dataset():
    result = invoke("simulate", *SMALL, "--carbon", "DE")
    assert result.exit_code == 0, result.output
    assert "carbon: 380.95 gCO2e/kWh from codecarbon 3.3.2" in result.output


def test_numbers_and_files_are_recorded_as_given(tmp_path):
    s = _json("simulate", *SMALL, "--carbon", "400")
    assert (s["carbon_g_per_kwh"], s["carbon_source"]) == (400.0, "--carbon 400")
    path = tmp_path / "hours.csv"
    path.write_text("hour,g_co2_per_kwh\n0,400\n1,100\n")
    s = _json("simulate", *SMALL, "--carbon", str(path))
    assert s["carbon_g_per_kwh"] is None and s["carbon_source"] == f"{path} (hourly, 2 rows)"
    s = _json("simulate", *SMALL)
    assert s["carbon_g_per_kwh"] is None and s["carbon_source"] is None and s["kg_co2e"] is None


@needs_codecarbon
def test_simulate_unknown_region_is_one_line_with_close_matches():
    one_line_error(invoke("simulate", *SMALL, "--carbon", "Frnace"), "--carbon Frnace", "close: France")
    one_line_error(invoke("simulate", *SMALL, "--carbon", "aws:us-east-1"), "--carbon aws:us-east-1", "no aws regions")


def test_missing_csv_file_is_still_a_file_error(tmp_path):
    one_line_error(invoke("simulate", *SMALL, "--carbon", str(tmp_path / "nope.csv")), "nope.csv", "carbon CSV")


def test_region_without_the_extra_says_what_to_install(monkeypatch):
    monkeypatch.setattr(grid_intensity, "codecarbon_data", lambda: None)
    one_line_error(invoke("simulate", *SMALL, "--carbon", "DE"), "--carbon DE", "pip install 'tokenjoule[carbon]'")
    one_line_error(invoke("project", "azure-code-2023", "--profile", TOY, "--carbon", "DE"), "--carbon DE",
                   "pip install 'tokenjoule[carbon]'")


# project --pue --host-power-w --carbon


def _run_s(name: str, est: dict, tp: int) -> float:
    """The time host power is charged for: the load-aware run on every replica, else the busy replica-seconds."""
    if name == "load_aware":
        return est["duration_s"] * est["replicas"]
    return est["busy_s"] if name == "paper" else est["gpu_s"] / tp


@pytest.mark.parametrize("replicas, tp", [("1", "1"), ("2", "1"), ("1", "2")])
def test_project_facility_terms_follow_simulates_arithmetic(trace_csv, replicas, tp):
    server = ["--profile", TOY, "--replicas", replicas, "--tp", tp]
    base = _json("project", trace_csv, *server)
    got = _json("project", trace_csv, *server, "--pue", "1.5", "--host-power-w", "200", "--carbon", "400")
    theory = got["estimates"]["theoretical"]
    assert theory["gpu_s"] == pytest.approx(theory["energy_j"] / theory["tdp_w"], rel=1e-12)  # FLOPs at peak
    assert (got["carbon_g_per_kwh"], got["carbon_source"]) == (400.0, "--carbon 400")
    assert got["inputs"]["sim"]["pue"] == 1.5 and got["inputs"]["sim"]["host_power_w"] == 200.0
    for name, est in got["estimates"].items():
        gpu_j = base["estimates"][name]["energy_j"]
        assert est["energy_j"] == gpu_j  # the GPU estimate itself does not move
        assert _run_s(name, est, int(tp)) > 0
        assert est["host_j"] == pytest.approx(200.0 * _run_s(name, est, int(tp)), rel=1e-12)
        total = (gpu_j + est["host_j"]) * 1.5
        assert est["energy_total_j"] == pytest.approx(total, rel=1e-12)
        assert est["facility_overhead_j"] == pytest.approx(0.5 * (gpu_j + est["host_j"]), rel=1e-12)
        assert est["kwh"] == pytest.approx(total / 3.6e6, rel=1e-12)
        assert est["kg_co2e"] == pytest.approx(total / 3.6e6 * 400 / 1000, rel=1e-12)
        requests = est["estimated"] if name == "paper" else est["requests"]
        assert est["j_per_request"] == pytest.approx(total / requests, rel=1e-12)


def test_project_defaults_add_nothing(trace_csv):
    data = _json("project", trace_csv, "--profile", TOY)
    assert data["carbon_g_per_kwh"] is None and data["carbon_source"] is None
    for est in data["estimates"].values():
        assert est["energy_total_j"] == est["energy_j"] and est["host_j"] == 0 and est["facility_overhead_j"] == 0
        assert est["kg_co2e"] is None


def test_paper_busy_time_is_its_batches_back_to_back(trace_csv):
    paper = _json("project", trace_csv, "--profile", TOY, "--estimators", "paper")["estimates"]["paper"]
    from tokenjoule.calibrate.profile import load_profile
    from tokenjoule.sim.cost import CalibratedCost
    from tokenjoule.sim.project.binned import batch_cost

    cost = CalibratedCost(load_profile(TOY))
    want = sum(b["count"] / b["batch"] * batch_cost(cost, b["batch"], b["input_tokens"], b["output_tokens"])[0]
               for b in paper["bins"] if b["batch"])
    assert paper["busy_s"] == pytest.approx(want, rel=1e-12) and want > 0


@needs_codecarbon
def test_project_carbon_by_region(trace_csv):
    want = grid_intensity.region_intensity("gcp:europe-west1").g_per_kwh
    data = _json("project", trace_csv, "--profile", TOY, "--carbon", "gcp:europe-west1")
    assert data["carbon_g_per_kwh"] == want and "codecarbon 3.3.2" in data["carbon_source"]
    for est in data["estimates"].values():
        assert est["kg_co2e"] == pytest.approx(est["kwh"] * want / 1000.0, rel=1e-12)


def test_project_table_shows_totals_and_carbon(trace_csv):
    result = invoke("project", trace_csv, "--profile", TOY, "--pue", "1.2", "--carbon", "300")
    assert result.exit_code == 0, result.output
    assert "kg CO2e" in result.output and "facility: PUE 1.2, host 0 W per replica; carbon 300 gCO2e/kWh" in (
        result.output)


@pytest.mark.parametrize("flag, value, needle", [("--pue", "0.9", ">= 1"), ("--host-power-w", "-5", ">= 0"),
                                                 ("--carbon", "-1", ">= 0"), ("--pue", "nan", ">= 1")])
def test_project_refuses_unphysical_facility_flags(trace_csv, flag, value, needle):
    one_line_error(invoke("project", trace_csv, "--profile", TOY, flag, value), f"{flag} ", needle)


def test_project_refuses_an_hourly_file_naming_the_flag(trace_csv, tmp_path):
    path = tmp_path / "hours.csv"
    path.write_text("hour,intensity\n0,400\n")
    one_line_error(invoke("project", trace_csv, "--profile", TOY, "--carbon", str(path)), f"--carbon {path}",
                   "constant intensity")


def test_readme_documents_regions_their_source_and_project_facility_flags():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for phrase in ("`gcp:europe-west1`", "CodeCarbon", "MIT license", "'.[carbon]'", "`carbon_source`",
                   "`tokenjoule project` takes the same `--pue`, `--host-power-w` and `--carbon`"):
        assert phrase in readme, phrase
    simulate_keys = _json("simulate", *SMALL)
    for key in simulate_keys:
        assert key in readme or key.split("_")[0] in ("ttft", "tpot", "e2e", "queue"), key  # latencies: {..}_{p50,..}
