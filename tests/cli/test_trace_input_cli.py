"""Trace files through `simulate`, `project` and `trace`: the shared trace flags, input errors, and trace notes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tokenjoule.cli import app

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
TRACE_FLAGS = ("--map", "--time-unit", "--zero-output", "--unsorted", "--spread-buckets-s", "--arrivals", "--rate",
               "--cv")
ENERGY = ("energy_total_j", "gpu_busy_j", "gpu_idle_j", "requests", "finished", "rejected", "ttft_p50_s", "e2e_p99_s")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def simulate_json(*args: str) -> dict:
    result = invoke("simulate", "--profile", TOY, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def compare_json(*args: str) -> dict:
    result = invoke("compare", "--profiles", TOY, "--policies", "static,continuous", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def project_json(*args: str) -> dict:
    result = invoke("project", *args, "--profile", TOY, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result, *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def estimates(data: dict) -> dict:
    return {name: est["energy_j"] for name, est in data["estimates"].items()}


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    """The same 60 requests written several ways, plus variants with one property each."""
    rows = [(0.7 * i, 200 + 53 * (i % 11), 4 + 7 * (i % 5)) for i in range(60)]
    texts = {
        "canonical.csv": "arrival_s,input_tokens,output_tokens\n" + "".join(f"{a},{i},{o}\n" for a, i, o in rows),
        "mine_ms.csv": "when_ms,prompt,answer\n" + "".join(f"{a * 1000},{i},{o}\n" for a, i, o in rows),
        "lengths.csv": "num_prefill_tokens,num_decode_tokens\n" + "".join(f"{i},{o}\n" for _, i, o in rows),
        "zero.csv": "arrival_s,input_tokens,output_tokens\n0,100,5\n1,200,0\n2,300,7\n",
        # rows 3 and 6 (of the data) arrive before the row above them; ids 4 and 2 come back
        "unsorted.csv": "arrival_s,input_tokens,output_tokens,request_id\n0,100,5,1\n2,200,6,2\n1,300,7,3\n"
                        "3,120,4,4\n5,220,8,4\n4,320,9,5\n6,140,3,2\n",
        "sorted.csv": "arrival_s,input_tokens,output_tokens,request_id\n0,100,5,1\n1,300,7,3\n2,200,6,2\n"
                      "3,120,4,4\n4,320,9,5\n5,220,8,4\n6,140,3,2\n",
        "repeats.csv": "arrival_s,input_tokens,output_tokens,request_id\n0,100,5,1\n1,300,7,1\n2,200,6,1\n"
                       "3,120,4,2\n",
        "blank.jsonl": '{"arrival_s": 0, "input_tokens": 10, "output_tokens": 2}\n\n'
                       '{"arrival_s": 1, "input_tokens": 10, "output_tokens": 2}\n'
                       '{"arrival_s": 2, "input_tokens": -5, "output_tokens": 2}\n',
        "bad.csv": "arrival_s,input_tokens,output_tokens\n0,10,2\n1,ten,2\n",
    }
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "folder").mkdir()
    return {name: str(tmp_path / name) for name in [*texts, "folder"]} | {"dir": str(tmp_path)}


MAPPED = ["--map", "arrival_s=when_ms,input_tokens=prompt,output_tokens=answer", "--time-unit", "ms"]


def test_simulate_reads_a_mapped_trace_as_the_canonical_one(files):
    mapped = simulate_json("--trace", files["mine_ms.csv"], *MAPPED)
    canonical = simulate_json("--trace", files["canonical.csv"])
    assert {k: mapped[k] for k in ENERGY} == pytest.approx({k: canonical[k] for k in ENERGY}, rel=1e-12)  # ms -> s


def test_project_streams_a_mapped_trace_as_the_canonical_one(files):
    mapped, canonical = project_json(files["mine_ms.csv"], *MAPPED), project_json(files["canonical.csv"])
    assert mapped["requests"] == canonical["requests"] == 60
    assert estimates(mapped) == pytest.approx(estimates(canonical), rel=1e-12)  # ms -> s rounds the last bit


def test_zero_output_flag_reaches_simulate_and_project(files):
    dropped = simulate_json("--trace", files["zero.csv"])
    kept = simulate_json("--trace", files["zero.csv"], "--zero-output", "keep")
    assert (dropped["requests"], kept["requests"]) == (2, 3)
    assert kept["rejected_by_reason"] == {"empty_request": 1}
    assert project_json(files["zero.csv"])["rows_dropped"] == 1
    assert project_json(files["zero.csv"], "--zero-output", "keep")["rows_dropped"] == 0


@pytest.mark.parametrize("arrivals", [["--arrivals", "poisson", "--rate", "2"],
                                      ["--arrivals", "gamma", "--rate", "2", "--cv", "3"],
                                      ["--spread-buckets-s", "3"]])
def test_arrival_flags_give_what_trace_convert_gives(files, tmp_path, arrivals):
    source = files["canonical.csv"] if "--spread-buckets-s" in arrivals else files["lengths.csv"]
    converted = str(tmp_path / "converted.parquet")
    assert invoke("trace", "convert", source, converted, *arrivals, "--seed", "5").exit_code == 0
    direct = simulate_json("--trace", source, *arrivals, "--seed", "5")
    via_file = simulate_json("--trace", converted, "--seed", "5")
    assert {k: direct[k] for k in ENERGY} == {k: via_file[k] for k in ENERGY}
    assert estimates(project_json(source, *arrivals, "--seed", "5")) == estimates(project_json(converted))
    other_seed = simulate_json("--trace", source, *arrivals, "--seed", "6")
    assert other_seed["energy_total_j"] != direct["energy_total_j"]


def test_the_trace_flags_are_one_definition_on_every_command():
    command = typer.main.get_command(app)
    helps = {}
    for path in (["simulate"], ["compare"], ["project"], ["trace", "stats"], ["trace", "bin"], ["trace", "convert"]):
        cmd = command
        for name in path:
            cmd = cmd.get_command(typer.Context(cmd), name)  # the root mounts a command when it is asked for
        options = {opt: p for p in cmd.params for opt in p.opts if opt.startswith("--")}
        helps[" ".join(path)] = {flag: (options[flag].help, options[flag].default) for flag in TRACE_FLAGS}
    assert all(h == helps["simulate"] for h in helps.values())


@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_synthetic_traces_refuse_trace_flags(command):
    one_line_error(invoke(command, "--synthetic", "n=4", "--zero-output", "keep"),
                   "--zero-output: reads a trace file, and --synthetic builds its own trace")


def test_compare_reads_the_trace_with_the_trace_flags(files):
    mapped = compare_json("--trace", files["mine_ms.csv"], *MAPPED)
    canonical = compare_json("--trace", files["canonical.csv"])
    assert [c["label"] for c in mapped["cells"]] == [c["label"] for c in canonical["cells"]]
    for got, want in zip(mapped["cells"], canonical["cells"], strict=True):
        assert {k: got["summary"][k] for k in ENERGY} == pytest.approx({k: want["summary"][k] for k in ENERGY},
                                                                       rel=1e-12)
    kept = compare_json("--trace", files["zero.csv"], "--zero-output", "keep")
    assert [c["summary"]["requests"] for c in kept["cells"]] == [3, 3]
    poisson = compare_json("--trace", files["lengths.csv"], "--arrivals", "poisson", "--rate", "2", "--seed", "5")
    alone = simulate_json("--trace", files["lengths.csv"], "--arrivals", "poisson", "--rate", "2", "--seed", "5",
                          "--policy", "continuous")
    assert poisson["cells"][1]["summary"]["energy_total_j"] == alone["energy_total_j"]


def test_compare_applies_the_trace_flags_to_a_grid_files_trace(files, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(f'trace = "{files["lengths.csv"]}"\n[grid]\npolicy = ["static", "continuous"]\n')
    args = ["compare", "--config", str(grid), "--profiles", TOY, "--json"]
    one_line_error(invoke(*args), "--arrivals")  # a length-only file has no arrival times
    data = json.loads(invoke(*args, "--arrivals", "poisson", "--rate", "2").stdout)
    assert [c["summary"]["requests"] for c in data["cells"]] == [60, 60]


def test_compare_notes_the_trace_in_its_table_json_and_out_folder(files, tmp_path):
    data = compare_json("--trace", files["unsorted.csv"])
    assert [(n["kind"], n["count"]) for n in data["trace_notes"]] == [("unsorted_arrivals", 2),
                                                                      ("repeated_request_ids", 2)]
    assert compare_json("--trace", files["canonical.csv"])["trace_notes"] == []
    out = tmp_path / "cmp"
    result = invoke("compare", "--profiles", TOY, "--policies", "static,continuous", "--trace", files["unsorted.csv"],
                    "--unsorted", "sort", "--out", str(out))
    assert result.exit_code == 0, result.output
    table = " ".join(result.stdout.split())
    assert "note: arrivals out of order: 2 of 7 rows" in table and "note: request ids repeat: 2 rows" in table
    written = json.loads((out / "compare.json").read_text())
    assert written["trace_notes"] == data["trace_notes"] and written["trace_options"]["unsorted"] == "sort"


@pytest.mark.parametrize("command", [["simulate", "--trace"], ["compare", "--trace"], ["project"], ["trace", "stats"]])
@pytest.mark.parametrize(("flags", "needle"), [
    (["--rate", "3"], "--rate 3: only synthesized arrivals (--arrivals poisson or gamma) read it"),
    (["--cv", "2"], "--cv 2: only --arrivals gamma reads it"),
    (["--time-unit", "ms"], "--time-unit ms: only a mapped arrival column (--map) reads it"),
])
def test_a_trace_flag_nothing_reads_is_refused(files, command, flags, needle):
    one_line_error(invoke(*command, files["canonical.csv"], *flags), needle)


@pytest.mark.parametrize("command", [["simulate", "--trace"], ["project"], ["trace", "stats"], ["compare", "--trace"]])
@pytest.mark.parametrize("name", ["folder", "dir"])
def test_a_directory_is_not_a_trace(files, command, name):
    one_line_error(invoke(*command, files[name] + "/"), f"{files[name]}/: is a directory; give one trace file (CSV "
                   "or JSON Lines, plain or .gz, .bz2, .zst; or Parquet) or a bundled trace name")


@pytest.mark.parametrize("command", [["simulate", "--trace"], ["project"], ["trace", "stats"], ["trace", "bin"]])
def test_jsonl_errors_name_the_line_and_csv_errors_the_data_row(files, command):
    one_line_error(invoke(*command, files["blank.jsonl"]), "blank.jsonl: line 4: field 'input_tokens'=-5 is negative")
    one_line_error(invoke(*command, files["bad.csv"]),
                   "bad.csv: row 2 (header not counted): field 'input_tokens'='ten' is not a whole number")


@pytest.mark.parametrize("command", [["simulate", "--trace"], ["compare", "--trace"], ["project"], ["trace", "stats"]])
def test_unsorted_refuse_names_the_data_row(files, command):
    one_line_error(invoke(*command, files["unsorted.csv"], "--unsorted", "refuse"),
                   "unsorted.csv: row 3 (header not counted): field 'arrival_s' is earlier than the row before",
                   "--unsorted sort sorts them")


def test_simulate_notes_unsorted_arrivals_and_repeated_ids_and_keeps_its_result(files):
    noted = simulate_json("--trace", files["unsorted.csv"])
    assert [(n["kind"], n["count"]) for n in noted["trace_notes"]] == [("unsorted_arrivals", 2),
                                                                       ("repeated_request_ids", 2)]
    assert "sorted by arrival time" in noted["trace_notes"][0]["message"]
    in_order = simulate_json("--trace", files["sorted.csv"])
    assert in_order["trace_notes"] == [{"kind": "repeated_request_ids", "count": 2, "message": "request ids repeat: "
                                        "2 rows reuse the id of an earlier row; each row is still its own request"}]
    assert {k: noted[k] for k in ENERGY} == {k: in_order[k] for k in ENERGY}  # sorted, as before: same result
    table = " ".join(invoke("simulate", "--profile", TOY, "--trace", files["unsorted.csv"]).stdout.split())
    assert "note: arrivals out of order: 2 of 7 rows arrive earlier than the row before" in table
    assert "note: request ids repeat: 2 rows reuse the id" in table


def test_simulate_out_folder_keeps_the_notes(files, tmp_path):
    out = tmp_path / "run"
    assert invoke("simulate", "--profile", TOY, "--trace", files["repeats.csv"], "--out", str(out)).exit_code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(n["kind"], n["count"]) for n in summary["trace_notes"]] == [("repeated_request_ids", 2)]
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["trace_options"]["zero_output"] == "drop" and run_info["trace_options"]["mapping"] is None


def test_a_clean_trace_has_no_notes(files):
    assert simulate_json("--trace", files["canonical.csv"])["trace_notes"] == []
    assert simulate_json("--synthetic", "n=8")["trace_notes"] == []
    assert project_json(files["canonical.csv"])["trace_notes"] == []


def test_project_notes_streamed_repeats_and_sorted_arrivals(files):
    streamed = project_json(files["repeats.csv"])  # in order: counted while streaming
    assert [(n["kind"], n["count"]) for n in streamed["trace_notes"]] == [("repeated_request_ids", 2)]
    unsorted = project_json(files["unsorted.csv"])  # out of order: sorted in memory, both counted
    assert [(n["kind"], n["count"]) for n in unsorted["trace_notes"]] == [("unsorted_arrivals", 2),
                                                                          ("repeated_request_ids", 2)]
    assert estimates(unsorted) == estimates(project_json(files["sorted.csv"]))
    table = " ".join(invoke("project", files["unsorted.csv"], "--profile", TOY).stdout.split())
    assert "note: arrivals out of order: 2 of 7 rows" in table and "note: request ids repeat" in table


def test_trace_stats_and_convert_note_them_too(files, tmp_path):
    stats = json.loads(invoke("trace", "stats", files["unsorted.csv"], "--json").stdout)
    assert stats["notes"][0].startswith("arrivals out of order: 2 of 7 rows")
    assert stats["notes"][1].startswith("request ids repeat: 2 rows")
    converted = invoke("trace", "convert", files["repeats.csv"], str(tmp_path / "r.parquet"), "--json")
    assert any(n.startswith("request ids repeat: 2 rows") for n in json.loads(converted.stdout)["notes"])
