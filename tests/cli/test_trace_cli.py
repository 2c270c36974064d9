"""`tokenjoule trace ...` through CliRunner: outputs, JSON, written files, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app
from tokenjoule.traces.binning import BinSpec, bin_trace
from tokenjoule.traces.loaders import load_trace


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner: CliRunner, *args: str):
    return runner.invoke(app, ["trace", *args])


def test_stats_bundled_human(runner):
    result = run(runner, "stats", "azure-conv-2023")
    assert result.exit_code == 0, result.output
    for text in ("19,366", "1,020", "129", "5.530 req/s", "inter-arrival CV", "index of dispersion"):
        assert text in result.stdout


def test_stats_json_is_one_object(runner):
    result = run(runner, "stats", "azure-conv-2023", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["rows"] == 19_366 and data["input_tokens"]["p50"] == 1020 and data["output_tokens"]["p50"] == 129
    assert data["sorted"] and data["rows_dropped"] == 0


def test_stats_generic_mapping(runner, tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("t,i,o\n0,5,1\n2000,6,2\n")
    result = run(runner, "stats", str(path), "--map", "arrival_s=t,input_tokens=i,output_tokens=o",
                 "--time-unit", "ms", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["span_s"] == 2.0


def test_bin_json_counts_add_up(runner):
    result = run(runner, "bin", "azure-code-2023", "--json")
    data = json.loads(result.stdout)
    assert data["binned"] + data["excluded"] == data["rows"] == 8_819
    clamped = json.loads(run(runner, "bin", "azure-code-2023", "--clamp", "--json").stdout)
    assert clamped["binned"] == 8_819 and clamped["clamped"] == data["excluded"]


def test_bin_human_windows_and_out_file(runner, tmp_path):
    out = tmp_path / "bins.parquet"
    result = run(runner, "bin", "azure-conv-2023", "--input-edges", "1024,8192", "--output-edges", "128,1024",
                 "--window-s", "600", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "<=1024" in result.stdout and "6 windows of 600.0 s" in result.stdout
    expected = bin_trace(load_trace("azure-conv-2023"), BinSpec((1024, 8192), (128, 1024)), window_s=600.0)
    table = pq.read_table(out)
    assert sum(table.column("count").to_pylist()) == expected.binned
    assert table.column("window").to_pylist() == expected.to_table().column("window").to_pylist()


def test_synth_writes_reproducible_parquet(runner, tmp_path):
    args = ["-n", "300", "--rate", "5", "--process", "gamma", "--cv", "2", "--lengths-from", "azure-code-2023",
            "--seed", "9"]
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert run(runner, "synth", str(a), *args).exit_code == 0
    result = run(runner, "synth", str(b), *args, "--json")
    assert json.loads(result.stdout)["rows"] == 300
    assert pq.read_table(a).equals(pq.read_table(b))


def test_synth_offline_batch(runner, tmp_path):
    out = tmp_path / "batch.parquet"
    result = run(runner, "synth", str(out), "-n", "64", "--process", "zero", "--input-tokens", "1024")
    assert result.exit_code == 0 and "64 requests" in result.stdout
    trace = load_trace(out)
    assert trace.span_s == 0.0 and set(trace.column("input_tokens").tolist()) == {1024}


def test_convert_with_slice_and_scale(runner, tmp_path):
    out = tmp_path / "peak.parquet"
    result = run(runner, "convert", "azure-conv-2023", str(out), "--start-s", "600", "--end-s", "1200",
                 "--scale-rate", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    trace = load_trace(out)
    assert len(trace) == data["rows"] > 0 and trace.span_s <= 300.0
    assert [p for p in tmp_path.iterdir() if p.name != "peak.parquet"] == []


def test_convert_burstgpt_reports_drops(runner, tmp_path):
    src = tmp_path / "b.csv"
    src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   "1,m,5,0,5,x\n2,m,5,3,8,x\n")
    result = run(runner, "convert", str(src), str(tmp_path / "b.parquet"))
    assert result.exit_code == 0 and "dropped 1" in result.stdout


AZ = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
ROW2 = "row 2 (header not counted): "  # CSV rows count data rows: the header is not one


@pytest.mark.parametrize("content, args, message", [
    ("t,i\n1,2\n", ["--map", "arrival_s=t,input_tokens=i,output_tokens=o"], "missing column 'o'"),
    (AZ + "2023-11-16 18:15:47.0,many,5\n", [], ROW2 + "field 'ContextTokens'='many' is not a whole number"),
    (AZ + "2023-11-16 18:15:47.0,-7,5\n", [], ROW2 + "field 'ContextTokens'=-7 is negative"),
    (AZ + "2023-11-16 18:15:47.0,7,-5\n", [], ROW2 + "field 'GeneratedTokens'=-5 is negative"),
    (AZ + "not-a-time,7,5\n", [], ROW2 + "field 'TIMESTAMP'='not-a-time' is not a date-time"),
    ("", [], "empty file"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", [], "no requests"),
    (AZ + "2023-11-16 18:15:40.0,7,5\n", ["--unsorted", "refuse"], ROW2 + "field 'TIMESTAMP' is earlier"),
    ("a,b\n1,2\n", [], "unknown trace format (columns: a, b)"),
    ("a,b\n1,2\n", ["--format", "nope"], "--format 'nope': unknown"),
    ("num_prefill_tokens,num_decode_tokens\n5,5\n", [], "has no arrival times"),
    (AZ, ["--zero-output", "sometimes"], "--zero-output 'sometimes'"),
])
@pytest.mark.parametrize("command", ["stats", "bin", "convert"])
def test_bad_input_is_one_line_nonzero_no_traceback(runner, tmp_path, content, args, message, command):
    path = tmp_path / "in.csv"
    path.write_text(content)
    extra = [str(tmp_path / "out.parquet")] if command == "convert" else []
    result = run(runner, command, str(path), *extra, *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: ")
    assert isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # nothing half-written


def test_missing_file(runner, tmp_path):
    result = run(runner, "stats", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2 and "no such file or bundled trace" in result.output
    assert "Traceback" not in result.output


def test_synth_bad_arguments(runner, tmp_path):
    result = run(runner, "synth", str(tmp_path / "x.parquet"), "-n", "0")
    assert result.exit_code == 2 and "--requests 0: must be in 1.." in result.output
    assert not Path(tmp_path / "x.parquet").exists()
    bad_dir = tmp_path / "missing" / "x.parquet"
    result = run(runner, "synth", str(bad_dir), "-n", "5")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_console_entry_point_exit_codes(capsys):
    from tokenjoule.cli import main

    assert main(["trace", "stats", "/no/such/file.csv"]) == 2
    assert main(["trace", "stats", "azure-code-2023", "--no-such-flag"]) == 2
    assert main(["trace", "stats", "azure-code-2023", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows"] == 8_819
    assert "error: /no/such/file.csv: no such file" in captured.err and "Traceback" not in captured.err


def test_stats_on_unsorted_file_sorts_and_says_so(runner, tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "10,m,1,1,2,x\n5,m,2,2,4,x\n7,m,3,3,6,x\n")
    result = run(runner, "stats", str(path))
    assert result.exit_code == 0 and "arrivals out of order: 1 of 3 rows" in " ".join(result.stdout.split())
    data = json.loads(run(runner, "stats", str(path), "--json").stdout)
    assert data["sorted"] and data["notes"] == ["arrivals out of order: 1 of 3 rows arrives earlier than the row "
                                                "before; sorted by arrival time (rows arriving together keep their "
                                                "order)"]
