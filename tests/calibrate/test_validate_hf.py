"""The HF validation entry: its time guard, a whole run on the fake engine, and the device entry on a tiny CPU model."""

import dataclasses
import json
import sys
import time

import pyarrow.parquet as pq
import pytest
from fake_pynvml import make_pynvml
from test_generate_sweep import SMALL, SPEC, _fakes

from tokenjoule.calibrate.profile import resolve_profile_path
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.calibrate.validate import hf as vh
from tokenjoule.cli import main


def test_fit_scenario_runs_the_batches_that_fit_or_none(toy_profile):
    s = vh.static_scenario(4, 3, 1024, 128)
    per_batch = static_batch_cost(toy_profile, 4, 1024, 128)["time_s"] * vh.MARGIN
    warm = per_batch  # the warm-up is one whole batch of the shape
    assert vh.fit_scenario(s, toy_profile, 1e6) == s
    assert vh.fit_scenario(s, toy_profile, warm + 2.5 * per_batch).static_batches == 2
    assert vh.fit_scenario(s, toy_profile, warm + 1.01 * per_batch).static_batches == 1
    assert vh.fit_scenario(s, toy_profile, warm + 0.99 * per_batch) is None
    assert vh.fit_scenario(s, toy_profile, -5.0) is None


def test_scenarios_are_offline_static_batches_in_the_validate_device_format():
    names = [s.name for s in vh.SCENARIOS]
    assert names[0] == "hf_static_b4_i1024_o128" and len(set(names)) == len(names) >= 4
    for s in vh.SCENARIOS:
        assert s.offline and s.policy == "static" and s.static_batches >= 2
        assert s.max_num_seqs == s.static_batch and s.max_num_batched_tokens == s.static_batch * s.static_input_tokens
    assert vh.GRID.budget_s + 160 < vh.BUDGET_S  # the sweep leaves time for the scenarios on an H100


def _plan(budget_s):
    scenarios = (vh.static_scenario(4, 2, 1024, 16), vh.static_scenario(16, 2, 128, 24))
    return vh.HFPlan(SPEC, device="cpu", grid=SMALL, scenarios=scenarios, budget_s=budget_s, idle_end_s=0.0)


def test_run_plan_on_the_fake_engine_measures_what_the_profile_predicts(toy_profile, tmp_path, capsys):
    timeline, meter, runner = _fakes(toy_profile)
    doc = vh.run_plan(_plan(1e5), tmp_path, meter, runner=runner, wait=timeline.idle)
    assert [s["scenario"]["name"] for s in doc["scenarios"]] == ["hf_static_b4_i1024_o16", "hf_static_b16_i128_o24"]
    assert doc["engine"] == "hf" and doc["kv_block_tokens"] == 1 and doc["runner_config"]["engine"] == "hf"
    profile_path = tmp_path / doc["profile"]
    assert profile_path.exists() and profile_path.with_name(profile_path.stem + ".raw.parquet").exists()
    reqs = pq.read_table(tmp_path / "requests.parquet").to_pylist()
    its = pq.read_table(tmp_path / "iterations.parquet").to_pylist()
    for entry in doc["scenarios"]:
        s = entry["scenario"]
        rows = [r for r in reqs if r["scenario"] == s["name"]]
        assert len(rows) == entry["n_requests"] == entry["n_finished"] == s["static_batch"] * s["static_batches"]
        for r in rows:
            assert r["arrival_s"] == 0.0 and 0 < r["first_token_s"] < r["finish_s"] <= entry["duration_s"] + 1e-9
        assert entry["iterations"] == s["static_batches"] * s["static_output_tokens"]
        assert len([i for i in its if i["scenario"] == s["name"] and i["prefill_seqs"]]) == s["static_batches"]
        # the fake engine's generate() is what the profile was calibrated on: energy and time agree closely
        pred = entry["modeled_prediction"]
        assert abs(pred["energy_error"]) < 0.02 and abs(pred["time_error"]) < 0.02
        b, n_in, n_out = s["static_batch"], s["static_input_tokens"], s["static_output_tokens"]
        assert entry["energy_j"] == pytest.approx(runner.expected(b, n_in, n_out)[1] * s["static_batches"], rel=0.02)
    assert "profile predicts" in capsys.readouterr().out
    # each scenario first runs one whole unmeasured batch of its shape, then its measured batches
    assert doc["scenario_warmup"] == vh.SCENARIO_WARMUP
    for entry in doc["scenarios"]:
        s = entry["scenario"]
        shape = (s["static_batch"], s["static_input_tokens"], s["static_output_tokens"])
        assert runner.calls.count(shape) == s["static_batches"] + 1


def test_run_plan_skips_scenarios_past_the_budget(toy_profile, tmp_path, capsys):
    timeline, meter, runner = _fakes(toy_profile)
    doc = vh.run_plan(_plan(1.0), tmp_path, meter, runner=runner, wait=timeline.idle)
    assert doc["scenarios"] == [] and (tmp_path / doc["profile"]).exists()
    assert capsys.readouterr().out.count("skipping") == 2


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:tick timing bounds")
@pytest.mark.filterwarnings("ignore:no start tick")
def test_device_entry_end_to_end_on_a_tiny_cpu_model(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    start = time.perf_counter()
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(
        energy_mj=lambda i: int(100.0 * int((time.perf_counter() - start) / 0.01) * 0.01 * 1000)))
    # a loaded CPU makes the tiny profile's predictions noisy: a large budget keeps the time guard out of the way
    plan = dataclasses.replace(vh.tiny_plan("cpu"), idle_end_s=0.05, budget_s=1e4)
    out = tmp_path / "out"
    monkeypatch.setattr(vh, "make_plan", lambda *args, **kwargs: plan)
    assert main(["validate", "hf", "--out", str(out), "--tiny", "--device", "cpu"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"requests.parquet", "iterations.parquet", "timeline.parquet", "validation.json",
                                "validate.log", "profile-tiny-llama-hf-eager.json"} <= set(files)
    doc = json.loads((out / "validation.json").read_text())
    profile = json.loads((out / doc["profile"]).read_text())
    assert profile["engine"] == "hf" and profile["method"]["time"].startswith("generate()-based")
    assert [s["scenario"]["name"] for s in doc["scenarios"]] == [s.name for s in plan.scenarios]
    reqs = pq.read_table(out / "requests.parquet").to_pylist()
    for entry in doc["scenarios"]:
        assert entry["completed"] and entry["energy_j"] == pytest.approx(100.0 * entry["duration_s"], abs=2.0)
        rows = [r for r in reqs if r["scenario"] == entry["scenario"]["name"]]
        assert len(rows) == entry["n_requests"] and all(0 < r["first_token_s"] <= r["finish_s"] for r in rows)
    assert "hf_static_b2_i32_o48" in capsys.readouterr().out


def test_device_entry_refuses_in_one_line_without_an_energy_counter(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", make_pynvml(init_error=9))  # NVML absent: a time-only meter
    assert main(["validate", "hf", "--out", str(tmp_path), "--tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "energy counter" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["validate.log"]  # refused before building the model


def test_short_from_carries_a_profile_to_a_slower_host_by_the_host_check(toy_profile, tmp_path, capsys):
    timeline, meter, runner = _fakes(toy_profile)
    base_doc = vh.run_plan(_plan(1e5), tmp_path / "a", meter, runner=runner, wait=timeline.idle)
    base = tmp_path / "a" / base_doc["profile"]
    # another host whose generate() spends 1.6x the host time per decode step and per call
    timeline, meter, slow = _fakes(toy_profile, setup=(0.032, 150.0), overhead=(0.048, 120.0))
    plan = dataclasses.replace(_plan(1e5), short_from=base)
    doc = vh.run_plan(plan, tmp_path / "b", meter, runner=slow, wait=timeline.idle)
    assert doc["profile_short_from"] == base.name and doc["profile"].endswith("-short.json")
    carried = json.loads((tmp_path / "b" / doc["profile"]).read_text())
    assert carried["method"]["short_recalibration_of"]["content_sha256"]
    assert carried["method"]["grid"]["prefill_batches"] == [1, 8]  # the host check's points, not the full grid
    assert doc["calibration_wall_s"] < 60  # on the fake clock: the check is seconds, the full sweep minutes
    assert "host check in" in capsys.readouterr().out
    for entry in doc["scenarios"]:
        assert abs(entry["modeled_prediction"]["time_error"]) < 0.05
    # the base profile as it is under-predicts the slower host's time by far more than the carried one misses
    base_profile = vh.load_profile(base)
    s = doc["scenarios"][0]["scenario"]
    as_is = static_batch_cost(base_profile, s["static_batch"], s["static_input_tokens"], s["static_output_tokens"])
    measured = doc["scenarios"][0]["duration_s"] / s["static_batches"]
    assert as_is["time_s"] / measured - 1 < -0.15


def test_short_from_refuses_another_models_profile_in_one_line(tmp_path):
    with pytest.raises(vh.ProfileError, match="h200-llama-3.1-8b-hf-eager.json: base profile is llama-3.1-8b"):
        vh.make_plan(tiny=True, device="cpu", short_from=resolve_profile_path("h200-llama-3.1-8b-hf-eager"))
