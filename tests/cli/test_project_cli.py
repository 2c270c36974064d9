"""`tokenjoule project`: --json shape, the human table, and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")


@pytest.fixture
def trace_csv(tmp_path) -> Path:
    path = tmp_path / "t.csv"
    rows = [f"{0.5 * i},{100 + 37 * i},{5 + i}" for i in range(40)] + ["30.0,20000,10"]
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "\n".join(rows) + "\n")
    return path


def _run(*args: str):
    return CliRunner().invoke(app, ["project", *args], terminal_width=200)


def test_json_is_one_object_with_three_estimates(trace_csv):
    result = _run(str(trace_csv), "--profile", TOY, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    est = data["estimates"]
    assert data["requests"] == 41
    assert est["paper"]["excluded"] == 1 and est["paper"]["estimated"] == 40
    assert est["theoretical"]["requests"] == 41 and est["theoretical"]["tdp_w"] == 700.0
    # the 20,000-token prompt exceeds the 8192-token prefill budget: the server rejects it
    assert (est["load_aware"]["requests"], est["load_aware"]["rejected"]) == (40, 1)
    assert est["load_aware"]["err_j"] >= 0
    for key in ("energy_j", "j_per_request"):
        assert all(est[name][key] > 0 for name in est)


def test_flags_reach_the_estimators(trace_csv):
    result = _run(str(trace_csv), "--profile", TOY, "--json", "--out-of-range", "clamp", "--max-batch", "4",
                  "--tdp-w", "350", "--peak-flops", "1e15", "--window-s", "10", "--input-edges", "64,2048",
                  "--output-edges", "16,64")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    paper, theory = data["estimates"]["paper"], data["estimates"]["theoretical"]
    assert paper["clamped"] == 1 and paper["max_batch"] == 4 and all(b["batch"] <= 4 for b in paper["bins"])
    assert {b["input_tokens"] for b in paper["bins"]} <= {64, 2048}
    assert (theory["tdp_w"], theory["peak_flops"]) == (350.0, 1e15)
    assert data["estimates"]["load_aware"]["window_s"] == 10.0


def test_human_table(trace_csv):
    result = _run(str(trace_csv), "--profile", TOY)
    assert result.exit_code == 0, result.output
    for word in ("paper", "theoretical", "load-aware", "J/request"):
        assert word in result.output


@pytest.mark.parametrize("args, message", [
    (["nope.csv", "--profile", TOY], "nope.csv"),
    (["{trace}", "--profile", "missing.json"], "missing.json"),
    (["{trace}", "--profile", TOY, "--out-of-range", "drop"], "--out-of-range 'drop'"),
    (["{trace}", "--profile", TOY, "--input-edges", "32,x"], "--input-edges"),
    (["{trace}", "--profile", TOY, "--input-edges", "64,32"], "--input-edges 64,32"),
    (["{trace}", "--profile", TOY, "--estimators", "paper,guess"], "--estimators 'paper,guess'"),
    (["{trace}", "--profile", TOY, "--window-s", "0"], "--window-s 0"),
    (["{trace}", "--profile", TOY, "--max-batch", "0"], "--max-batch 0"),
    (["{trace}", "--profile", TOY, "--policy", "static", "--max-num-seqs", "64"], "--max-num-seqs"),
    (["{trace}", "--profile", TOY, "--policy", "static", "--max-batched-tokens", "4096"], "--max-batched-tokens"),
])
def test_user_errors_are_one_line(trace_csv, args, message):
    result = _run(*[a.replace("{trace}", str(trace_csv)) for a in args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, flag, reader", [
    (["--estimators", "paper", "--window-s", "30"], "--window-s", "load-aware"),
    (["--estimators", "paper,theoretical", "--policy", "static"], "--policy", "load-aware"),
    (["--estimators", "paper", "--max-num-seqs", "64"], "--max-num-seqs", "load-aware"),
    (["--estimators", "load-aware", "--max-batch", "8"], "--max-batch", "paper"),
    (["--estimators", "theoretical", "--input-edges", "64,2048"], "--input-edges", "paper"),
    (["--estimators", "theoretical", "--out-of-range", "exclude"], "--out-of-range", "paper"),  # given, as default
    (["--estimators", "paper,load-aware", "--tdp-w", "350"], "--tdp-w", "theoretical"),
])
def test_a_flag_only_a_left_out_estimator_reads_is_refused(trace_csv, args, flag, reader):
    result = _run(str(trace_csv), "--profile", TOY, *args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: only the {reader} estimator reads it"), lines


def test_an_estimators_own_flags_work_when_it_is_chosen(trace_csv):
    result = _run(str(trace_csv), "--profile", TOY, "--json", "--estimators", "paper", "--max-batch", "4")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["estimates"]["paper"]["max_batch"] == 4


def test_missing_default_profile_says_what_to_do(trace_csv, monkeypatch):
    from tokenjoule.sim import cli as sim_cli

    monkeypatch.setattr(sim_cli, "DEFAULT_PROFILE", "no-such-shipped-profile")  # simulate and project share it
    result = _run(str(trace_csv))
    assert result.exit_code == 2
    assert "--profile" in result.stderr and "no-such-shipped-profile" in result.stderr
