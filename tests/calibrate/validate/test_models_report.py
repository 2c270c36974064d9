"""`tokenjoule validate models` on two of the committed lease's models: each priced without its own measurements."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.overhead_fit import _fit_serving_host
from tokenjoule.calibrate.validate.models import (
    energy_window,
    fold,
    gpu_profile_of,
    measured_iterations,
    replayed_spec,
    resolves_max,
)
from tokenjoule.calibrate.validate.report import load_run, measured_metrics, scenario_rows, simulate
from tokenjoule.cli import app
from tokenjoule.kernels.spec import ModelSpec

REPO = Path(__file__).resolve().parents[3]
LEASE = REPO / "validation" / "h200_2026-12-03_models"
OPS = REPO / "calibrate" / "profiles" / "measurements" / "h200_lease4_2026-12-03" / "ops"
MODELS = ("llama-3.2-1b", "olmoe-1b-7b")


@pytest.fixture(scope="module")
def two_model_lease(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lease = tmp_path_factory.mktemp("lease")
    for name in MODELS:
        (lease / name).symlink_to(LEASE / name, target_is_directory=True)
    return lease


def test_each_model_is_priced_by_a_fold_that_never_saw_it(two_model_lease: Path, tmp_path: Path):
    out = tmp_path / "models.md"
    result = CliRunner().invoke(app, ["validate", "models", str(two_model_lease), "--ops", str(OPS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert [m["model"] for m in report["models"]] == list(MODELS)
    assert out.with_name("models_energy.png").stat().st_size > 1000
    for m in report["models"]:
        other = next(n for n in MODELS if n != m["model"])
        assert m["overheads"]["fitted_on"] and all(p.startswith(other + "/") for p in m["overheads"]["fitted_on"])
        assert len(m["scenarios"]) == 5 and all(s["error"]["energy_total_j"] is not None for s in m["scenarios"])
    assert set(report["targets"]) == {"energy_median", "energy_max", "tpot_p50_median", "ttft_p50_median"}
    text = out.read_text()
    assert "MODELED" in text and "| olmoe-1b-7b | yes |" in text
    # the 1B's 1.09 s static batch was a plain counter difference: it cannot show a 6% error, so the resolved max
    # leaves it out, and only it
    resolved = report["energy_max_resolved"]
    assert resolved["left_out"] == ["llama-3.2-1b static_b8_i1024_o256_m"] and resolved["n"] == 9
    assert resolved["energy_max"] == max(abs(s["error"]["energy_total_j"]) for m in report["models"]
                                         for s in m["scenarios"] if "static" not in s["scenario"]
                                         or m["model"] != "llama-3.2-1b")
    assert "Left out: llama-3.2-1b static_b8_i1024_o256_m" in text

    # one scenario again by hand: fold without the model, compose, simulate, compare with the measured energy
    runs = {n: load_run(two_model_lease / n) for n in MODELS}
    for run in runs.values():
        run.update(measured_iterations(run["dir"], run["doc"]), spec=replayed_spec(run["doc"]))
    # OLMoE's context is 4,096 tokens, but the replay served requests up to 8,192: the simulation keeps them
    assert ModelSpec.from_name("olmoe-1b-7b").max_position_embeddings == 4096
    assert runs["olmoe-1b-7b"]["spec"].max_position_embeddings == 8192
    gpu = gpu_profile_of(OPS, "cudagraph")
    folded = fold(gpu, "olmoe-1b-7b", runs)
    # the fold's replay-fitted terms come from the other model's warm-up replays alone, never the held-out one's
    assert all(r["kind"] in ("decode", "prefill", "mixed") for r in runs["llama-3.2-1b"]["replays"])
    only_other = _fit_serving_host(runs["llama-3.2-1b"]["replays"])
    assert folded.overheads.serving_host_s_per_iteration == only_other["serving_host_s_per_iteration"] > 0
    assert only_other != _fit_serving_host(runs["olmoe-1b-7b"]["replays"])
    profile = compose_profile(folded, runs["olmoe-1b-7b"]["spec"])
    assert profile.host_overhead is not None
    run = runs["olmoe-1b-7b"]
    sc = run["doc"]["scenarios"][0]
    rows = scenario_rows(run["requests"], sc["scenario"]["name"])
    sim, _ = simulate(sc, rows, profile, run["doc"]["kv_block_tokens"])
    expected = sim["energy_total_j"] / measured_metrics(sc, rows)["energy_total_j"] - 1
    got = next(m for m in report["models"] if m["model"] == "olmoe-1b-7b")["scenarios"][0]["error"]["energy_total_j"]
    assert got == pytest.approx(expected, rel=1e-9)


def test_a_lease_replayed_in_another_mode_is_refused(two_model_lease: Path, tmp_path: Path):
    result = CliRunner().invoke(app, ["validate", "models", str(two_model_lease), "--ops", str(OPS), "--mode", "eager",
                                      "--out", str(tmp_path / "m.md")])
    assert result.exit_code != 0 and "replayed in cudagraph mode, not eager" in result.output
    assert not (tmp_path / "m.md").exists()
    assert dataclasses.is_dataclass(gpu_profile_of(OPS, "eager"))


def test_several_leases_pool_their_models_and_a_model_in_two_is_refused(two_model_lease: Path, tmp_path: Path):
    from tokenjoule.calibrate.cost_form import ProfileError
    from tokenjoule.calibrate.validate.models import model_runs

    other = tmp_path / "other_lease"
    other.mkdir()
    (other / "qwen2.5-7b").symlink_to(LEASE / "qwen2.5-7b", target_is_directory=True)
    assert [p.name for p in model_runs([two_model_lease, other])] == ["llama-3.2-1b", "olmoe-1b-7b", "qwen2.5-7b"]
    (other / "olmoe-1b-7b").symlink_to(LEASE / "olmoe-1b-7b", target_is_directory=True)
    with pytest.raises(ProfileError, match="model olmoe-1b-7b is also in"):
        model_runs([two_model_lease, other])
    with pytest.raises(ProfileError, match="no model folder"):
        model_runs(tmp_path / "empty")


def test_each_scenario_says_how_its_energy_window_was_measured():
    """Plain counter differences carry one counter period over the duration per edge; edge-aligned ones their bound."""
    plain = json.loads((LEASE / "llama-3.2-1b" / "validation.json").read_text())
    static = next(s for s in plain["scenarios"] if s["scenario"]["name"].startswith("static"))
    w = energy_window(static, plain["meter"]["update_period_s"])
    assert not w["aligned"] and w["per_edge"] == pytest.approx(0.1 / static["duration_s"], rel=0.01)
    assert not resolves_max(w)
    assert 0.08 < w["per_edge"] < 0.10  # the 1.09 s static batch: up to 9% of its energy at each edge
    aligned = json.loads((REPO / "validation" / "h200_2026-12-04_models" / "llama-3.2-1b" / "validation.json")
                         .read_text())
    static = next(s for s in aligned["scenarios"] if s["scenario"]["name"].startswith("static"))
    w = energy_window(static, aligned["meter"]["update_period_s"])
    assert w["aligned"] and w["per_edge"] is None and resolves_max(w)
    assert w["bound"] == pytest.approx(static["energy_bound_j"] / static["energy_j"]) and 0 < w["bound"] < 0.01
    # the plain difference over the same window is kept beside the aligned energy, within a period's worth of it
    assert abs(static["energy_raw_j"] - static["energy_j"]) < 0.1 * static["energy_j"] / static["duration_s"] * 2
