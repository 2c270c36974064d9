"""`tokenjoule simulate` and `tokenjoule compare` through CliRunner: outputs, files, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
SMALL = ["--synthetic", "n=40,input=512,output=64,rate=20"]


@pytest.fixture
def cli():
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]


def test_simulate_prints_a_summary_table(cli):
    result = cli("simulate", "--profile", TOY, *SMALL)
    assert result.exit_code == 0, result.output
    assert "J per request" in result.output and "calibrated" in result.output


@pytest.mark.parametrize(("args", "cost_model", "tp_modeled"), [
    (["--profile", TOY], "calibrated", False),
    (["--profile", TOY, "--tp", "2"], "calibrated", True),
    (["--model", "mistral-7b", "--gpu", "H200-SXM"], "composed", False),  # modeled, but its TP is not
    (["--model", "mistral-7b", "--gpu", "H200-SXM", "--tp", "2"], "composed", True),
])
def test_modeled_tp_is_said_only_when_a_profile_is_stretched_to_another_tp(cli, args, cost_model, tp_modeled):
    summary = json.loads(cli("simulate", *args, *SMALL, "--json").stdout)
    assert summary["cost_model"] == cost_model and summary["modeled"] is (tp_modeled or cost_model == "composed")
    table = " ".join(cli("simulate", *args, *SMALL).stdout.split())
    assert ("(modeled TP)" in table) is tp_modeled
    assert ("tensor parallelism is modeled from a tp=1 profile" in table) is tp_modeled


@pytest.mark.parametrize(("tp", "said"), [("1", False), ("2", True)])
def test_project_says_modeled_tp_only_when_it_is(cli, tmp_path, tp, said):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,input_tokens,output_tokens\n" + "".join(f"{i},{100 + i},{5 + i}\n" for i in range(8)))
    data = json.loads(cli("project", str(path), "--profile", TOY, "--tp", tp, "--estimators", "paper", "--json").stdout)
    assert data["cost_model"].startswith("calibrated") and ("(modeled tp)" in data["cost_model"]) is said


def test_simulate_json_is_one_object(cli):
    result = cli("simulate", "--profile", TOY, *SMALL, "--json", "--slo-ttft-s", "0.5")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["requests"] == 40 and summary["finished"] == 40
    assert summary["slo_ttft_attainment"] is not None
    for key in ("j_per_request", "j_per_token", "j_per_output_token", "kwh", "gpu_hours", "e2e_p99_s"):
        assert summary[key] > 0


def test_simulate_writes_outputs(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("simulate", "--profile", TOY, *SMALL, "--out", str(out), "--carbon", "350")
    assert result.exit_code == 0, result.output
    names = {p.name for p in out.iterdir()}
    assert names == {"requests.parquet", "summary.json", "run.json", "power.png", "energy_breakdown.png",
                     "latency_cdf.png"}
    assert pq.read_table(out / "requests.parquet").num_rows == 40
    assert json.loads((out / "summary.json").read_text())["kg_co2e"] > 0
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["config"]["carbon_g_per_kwh"] == 350.0 and "simpy" in run_info["versions"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    again = cli("simulate", "--profile", TOY, *SMALL, "--out", str(out), "--policy", "static")
    assert again.exit_code == 0
    assert json.loads((out / "summary.json").read_text())["policy"] == "static"


def test_simulate_bundled_trace_with_window(cli):
    result = cli("simulate", "--profile", TOY, "--window", "0:60", "--json")
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.stdout)["requests"] < 19366


def test_default_without_shipped_profile_names_it(cli):
    from tokenjoule.calibrate.profile import shipped_profiles

    if "h100-llama-3.1-8b-tokenjoule-cudagraph" in shipped_profiles():
        pytest.skip("the default profile is shipped")
    _one_line_error(cli("simulate"), "h100-llama-3.1-8b-tokenjoule-cudagraph")


@pytest.mark.parametrize("args,needles", [
    (["--model", "llama-3.1-70b"], ["is for model"]),
    (["--gpu", "H200-SXM"], ["measured on"]),
    (["--tp", "3"], ["--tp 3", "must divide"]),
    (["--replicas", "0"], ["--replicas 0", ">= 1"]),
    (["--policy", "fifo"], ["--policy 'fifo'"]),
    (["--window", "abc"], ["--window"]),
    (["--trace", "no-such-trace.csv"], ["no-such-trace.csv"]),
])
def test_bad_input_is_one_line(cli, args, needles):
    base = ["simulate", "--profile", TOY]
    if "--trace" not in args:
        base += SMALL
    _one_line_error(cli(*base, *args), *needles)


def test_request_too_long_for_kv_is_rejected_and_counted(cli, tmp_path):
    small_kv = tmp_path / "small_kv.json"  # a KV cache shorter than the model's context: the KV check decides
    small_kv.write_text(json.dumps({**json.loads(Path(TOY).read_text()), "kv_capacity_tokens": 50_000}))
    result = cli("simulate", "--profile", str(small_kv), "--synthetic", "n=3,input=60000,output=10", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rejected"] == 3 and summary["rejected_by_reason"] == {"kv_capacity": 3}


def test_roofline_needs_no_profile(cli):
    result = cli("simulate", "--cost", "roofline-memory", "--gpu", "H200-SXM", *SMALL, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cost_model"] == "roofline-memory"


def test_compare_grid_from_flags(cli, tmp_path):
    out = tmp_path / "cmp"
    result = cli("compare", "--profiles", TOY, "--policies", "static,continuous,chunked", "--replicas", "1,2",
                 *SMALL, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["cells"]) == 6 and data["pareto"]
    assert {p.name for p in out.iterdir()} == {"compare.json", "compare.parquet", "compare.csv", "pareto.png"}
    assert [c["label"] for c in data["cells"]][:2] == ["static, 1 replica", "static, 2 replicas"]


def test_compare_table_files_match_compare_json(cli, tmp_path):
    out = tmp_path / "cmp"
    result = cli("compare", "--profiles", TOY, "--policies", "static,chunked", "--axis", "rate_scale=1,3",
                 "--axis", "max_batch=2,4", "--axis", "arrival_window_s=0:1,0:2", *SMALL, "--out", str(out))
    assert result.exit_code == 0, result.output
    cells = json.loads((out / "compare.json").read_text())["cells"]
    assert cells[-1]["label"] == "chunked, x3 rate, window 0-2 s"
    assert len(cells) == 2 * 2 * 2 + 2 * 2  # static x batch x window x rate, then chunked x window x rate
    table = pq.read_table(out / "compare.parquet").to_pylist()
    with open(out / "compare.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(table) == len(csv_rows) == len(cells)
    assert list(csv_rows[0])[:7] == ["label", "pareto", "policy", "profile", "max_batch", "rate_scale",
                                     "arrival_window_s"]
    for cell, row, text in zip(cells, table, csv_rows, strict=True):
        assert row["label"] == text["label"] == cell["label"]
        assert row["rate_scale"] == cell["config"]["rate_scale"] == float(text["rate_scale"])
        assert row["arrival_window_s"] == cell["config"]["window_s"] == json.loads(text["arrival_window_s"])
        assert row["max_batch"] == (cell["config"]["max_batch"] if cell["config"]["policy"] == "static" else None)
        for key in ("energy_total_j", "j_per_request", "e2e_p99_s", "finished", "kv_capacity_tokens"):
            assert row[key] == cell["summary"][key] == pytest.approx(float(text[key]), rel=1e-15)
        assert row["profile_label"] == cell["summary"]["profile"] == text["profile_label"]
        assert json.loads(text["notes"]) == cell["summary"]["notes"]


def test_compare_unknown_axis_is_one_line(cli):
    _one_line_error(cli("compare", "--profiles", TOY, "--axis", "colour=red", *SMALL), "--axis colour=red",
                    "unknown grid axis 'colour'", "rate_scale")
    _one_line_error(cli("compare", "--profiles", TOY, "--axis", "max_num_seqs=0,8", *SMALL),
                    "--axis max_num_seqs=0,8", "--max-num-seqs 0: must be >= 1")


def test_simulate_events_file(cli, tmp_path):
    events = tmp_path / "events.parquet"
    result = cli("simulate", "--profile", TOY, *SMALL, "--replicas", "2", "--events", str(events), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    table = pq.read_table(events)
    assert table.column_names == ["replica", "start_s", "duration_s", "kind", "prefill_tokens", "prefill_seqs",
                                  "decode_seqs", "energy_j", "power_w"]
    energy = table.column("energy_j").to_pylist()
    assert sum(energy) == pytest.approx(summary["gpu_busy_j"] + summary["gpu_idle_j"], rel=1e-9)
    busy = [e for e, kind in zip(energy, table.column("kind").to_pylist(), strict=True) if kind != "idle"]
    assert sum(busy) == pytest.approx(summary["gpu_busy_j"], rel=1e-9)
    assert set(table.column("replica").to_pylist()) == {0, 1}
    assert [p.name for p in tmp_path.iterdir()] == ["events.parquet"]  # no temp file left behind


def test_simulate_without_events_writes_no_events_file(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("simulate", "--profile", TOY, *SMALL, "--out", "run")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert "events" not in " ".join(p.name for p in (tmp_path / "run").iterdir())


def test_simulate_events_path_is_checked_first(cli, tmp_path):
    _one_line_error(cli("simulate", "--profile", TOY, *SMALL, "--events", str(tmp_path / "no" / "e.parquet")),
                    "--events", "does not exist")
    _one_line_error(cli("simulate", "--profile", TOY, *SMALL, "--events", str(tmp_path)), "--events", "is a folder")


def test_compare_from_toml(cli, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'synthetic = "n=20,input=256,output=32,rate=10"\n[grid]\npolicy = ["static", "continuous"]\n'
                    f'profile = ["{TOY}"]\n[base]\nmax_batch = 4\n')
    result = cli("compare", "--config", str(grid))
    assert result.exit_code == 0, result.output
    assert "static" in result.output and "continuous" in result.output and "J/req" in result.output


def test_compare_malformed_toml_is_one_line(cli, tmp_path):
    grid = tmp_path / "bad.toml"
    grid.write_text("[grid\npolicy = [\n")
    _one_line_error(cli("compare", "--config", str(grid)), "bad.toml", "malformed TOML")
    grid.write_text('[grid]\ncolour = ["red"]\n')
    _one_line_error(cli("compare", "--config", str(grid)), "unknown grid axis 'colour'")


def test_help_has_examples(cli):
    for command in ("simulate", "compare"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output
