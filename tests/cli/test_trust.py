"""The issue "Trust and everyday use": each case a user hit, through `tokenjoule.cli.app`.

Output folders never lose a user's file; bad profiles, carbon files and flags end in one line naming the file or flag.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokenjoule.cli import app

TOY = str(Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json")
SMALL = ["--profile", TOY, "--synthetic", "n=20,input=256,output=16,rate=20"]
RUN_FILES = {"requests.parquet", "summary.json", "run.json", "power.png", "energy_breakdown.png", "latency_cdf.png"}


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line_error(result, *needles: str) -> str:
    """The exit code is 2 and stderr is one `error:` line holding each needle."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# 1. Output folders


def test_simulate_out_refuses_a_folder_holding_a_users_file(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line_error(invoke("simulate", *SMALL, "--out", str(out)), str(out), "notes.txt", "--force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_simulate_out_force_writes_only_its_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "summary.json").write_text("old")
    result = invoke("simulate", *SMALL, "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == RUN_FILES | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["finished"] == 20


def test_simulate_out_reuses_its_own_folder_without_force(tmp_path):
    out = tmp_path / "runs"
    assert invoke("simulate", *SMALL, "--out", str(out)).exit_code == 0
    again = invoke("simulate", *SMALL, "--out", str(out), "--policy", "static")
    assert again.exit_code == 0, again.output
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert json.loads((out / "summary.json").read_text())["policy"] == "static"


def test_simulate_out_dot_refuses_a_working_folder_and_leaves_nothing(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "notes.txt").write_text("mine")
    one_line_error(invoke("simulate", *SMALL, "--out", "."), "notes.txt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "work"]  # no `..old.*` folder


def test_simulate_out_dot_writes_into_an_empty_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("simulate", *SMALL, "--out", ".").exit_code == 0
    assert {p.name for p in tmp_path.iterdir()} == RUN_FILES


def test_simulate_out_refuses_a_file(tmp_path):
    out = tmp_path / "runs"
    out.write_text("mine")
    one_line_error(invoke("simulate", *SMALL, "--out", str(out)), "not a folder")
    assert out.read_text() == "mine"


def test_output_files_and_folders_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "a" / "runs"
        assert invoke("simulate", *SMALL, "--out", str(out)).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE((out / n).stat().st_mode) for n in RUN_FILES} == {0o644}


def test_every_output_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        run, cmp, events = tmp_path / "run", tmp_path / "cmp", tmp_path / "events.parquet"
        assert invoke("simulate", *SMALL, "--out", str(run), "--events", str(events)).exit_code == 0
        assert invoke("compare", "--profiles", TOY, "--policies", "static,continuous", "--synthetic",
                      "n=10,input=64,output=4", "--out", str(cmp)).exit_code == 0
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (run, cmp)} == {0o750}
    files = [*run.iterdir(), *cmp.iterdir(), events]
    assert len(files) == 11 and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}


def test_write_atomic_gives_the_usual_permissions(tmp_path):
    from tokenjoule.traces.files import write_atomic

    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "f.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_failed_write_leaves_no_file_and_no_new_folder(tmp_path):
    from tokenjoule.sim.report import write_folder_atomically

    out = tmp_path / "runs"

    def fill(tmp: Path) -> None:
        (tmp / "summary.json").write_text("half")
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError):
        write_folder_atomically(out, fill, ("summary.json",))
    assert not out.exists()
    out.mkdir()
    (out / "summary.json").write_text("before")
    with pytest.raises(RuntimeError):
        write_folder_atomically(out, fill, ("summary.json",))
    assert [p.name for p in out.iterdir()] == ["summary.json"] and (out / "summary.json").read_text() == "before"


def test_compare_out_refuses_a_folder_holding_a_users_file(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["compare", "--policies", "static,continuous", "--profiles", TOY, "--synthetic", "n=10,input=64,output=4"]
    one_line_error(invoke(*args, "--out", str(out)), "notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert invoke(*args, "--out", str(out), "--force").exit_code == 0
    assert {p.name for p in out.iterdir()} == {"notes.txt", "compare.json", "compare.parquet", "compare.csv",
                                               "pareto.png"}


# 2. Profiles are checked on load


def _bad_profile(tmp_path: Path, edit) -> str:
    data = json.loads(Path(TOY).read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))  # json writes NaN for float("nan"), as a hand-edited file might hold
    return str(path)


def _negative_energy(data: dict) -> None:
    data["energy"]["knot_values"] = [v - 40.0 for v in data["energy"]["knot_values"]]


def _nan_knot(data: dict) -> None:
    data["energy"]["knot_values"][2] = float("nan")


@pytest.mark.parametrize("command", [["simulate", "--synthetic", "n=10,input=64,output=4"],
                                     ["project", "azure-code-2023"], ["profile", "show"]])
def test_a_negative_energy_curve_is_refused_naming_the_file(tmp_path, command):
    path = _bad_profile(tmp_path, _negative_energy)
    args = [*command, path] if command[0] == "profile" else [*command, "--profile", path]
    one_line_error(invoke(*args), path, "energy curve", "must be finite and >= 0")


@pytest.mark.parametrize("command", [["simulate", "--synthetic", "n=10"], ["project", "azure-code-2023"]])
def test_a_nan_knot_is_refused_naming_the_file(tmp_path, command):
    path = _bad_profile(tmp_path, _nan_knot)
    one_line_error(invoke(*command, "--profile", path), path, "knot_values", "nan")


def test_a_negative_coefficient_that_turns_the_curve_negative_is_refused(tmp_path):
    path = _bad_profile(tmp_path, lambda d: d["latency"]["coef"].update(decode_ctx_tokens=-1e-6))
    one_line_error(invoke("simulate", "--profile", path, "--synthetic", "n=10"), path, "latency curve (decode)")


def test_a_negative_idle_power_is_refused(tmp_path):
    path = _bad_profile(tmp_path, lambda d: d.update(idle_power_w=-5.0))
    one_line_error(invoke("simulate", "--profile", path, "--synthetic", "n=10"), path, "idle_power_w")


def test_every_shipped_and_fixture_profile_still_loads():
    from tokenjoule.calibrate.profile import load_profile, shipped_profiles

    for path in [*shipped_profiles().values(), TOY]:
        load_profile(path).check_physical()


# 3. Carbon files and physical flags


def _carbon(tmp_path: Path, text: str) -> str:
    path = tmp_path / "grid.csv"
    path.write_text(text)
    return str(path)


def test_carbon_csv_reads_the_named_intensity_column_not_the_last(tmp_path):
    path = _carbon(tmp_path, "datetime,carbon_intensity_g_per_kwh,renewable_pct\n"
                             "2023-11-16T18:00:00Z,400,35\n2023-11-16T19:00:00Z,400,35\n")
    result = invoke("simulate", "--trace", "azure-code-2023", "--profile", TOY, "--carbon", path, "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["kg_co2e"] == pytest.approx(s["kwh"] * 0.400)  # 400 g/kWh, not the 35 of the last column


def test_carbon_csv_without_an_intensity_column_lists_the_headers(tmp_path):
    path = _carbon(tmp_path, "datetime,co2,renewable_pct\n2023-11-16T18:00:00Z,400,35\n")
    one_line_error(invoke("simulate", *SMALL, "--carbon", path), path, "headers found: datetime, co2, renewable_pct",
                   "carbon_intensity_g_per_kwh")


def test_carbon_csv_hours_align_to_an_absolute_traces_clock(tmp_path):
    # azure-code-2023 starts 2023-11-16 18:17 UTC and lasts about an hour: the 17:00 row must not price it.
    path = _carbon(tmp_path, "timestamp,gco2_per_kwh\n2023-11-16 17:00:00,900\n2023-11-16 18:00:00,200\n"
                             "2023-11-16 19:00:00,200\n")
    s = json.loads(invoke("simulate", "--trace", "azure-code-2023", "--profile", TOY, "--carbon", path,
                          "--json").stdout)
    assert s["kg_co2e"] == pytest.approx(s["kwh"] * 0.200)


def test_carbon_csv_that_misses_the_traces_start_is_refused(tmp_path):
    path = _carbon(tmp_path, "timestamp,gco2_per_kwh\n2024-01-01T00:00:00Z,300\n")
    one_line_error(invoke("simulate", "--trace", "azure-code-2023", "--profile", TOY, "--carbon", path),
                   "--carbon", "do not cover the trace's start 2023-11-16 18:17")


def test_carbon_csv_with_a_relative_time_trace_starts_at_its_first_row(tmp_path):
    path = _carbon(tmp_path, "timestamp,intensity\n2024-01-01T00:00:00Z,300\n2024-01-01T01:00:00Z,300\n")
    s = json.loads(invoke("simulate", *SMALL, "--carbon", path, "--json").stdout)
    assert s["kg_co2e"] == pytest.approx(s["kwh"] * 0.300)


def test_carbon_csv_rows_must_be_consecutive_hours(tmp_path):
    path = _carbon(tmp_path, "timestamp,intensity\n2024-01-01T00:00:00Z,300\n2024-01-01T03:00:00Z,300\n")
    one_line_error(invoke("simulate", *SMALL, "--carbon", path), "row 3", "consecutive hours")


@pytest.mark.parametrize(("flag", "value", "rule"), [
    ("--carbon", "-5", ">= 0"), ("--slo-ttft-s", "-1", "> 0"), ("--slo-tpot-s", "0", "> 0"), ("--pue", "0.9", ">= 1"),
    ("--host-power-w", "-1", ">= 0"), ("--idle-power-w", "-1", ">= 0"), ("--rate-scale", "0", "> 0"),
    ("--rate-scale", "-2", "> 0"), ("--pue", "nan", ">= 1"),
])
def test_negative_physical_flags_are_refused_naming_the_flag(flag, value, rule):
    one_line_error(invoke("simulate", *SMALL, flag, value), flag, rule)


# 4. Sizes and policy flags


def test_a_huge_synthetic_trace_is_refused_with_the_cap_and_why():
    one_line_error(invoke("simulate", "--profile", TOY, "--synthetic", "n=100000000000,input=1,output=1"),
                   "--synthetic", "n=100000000000", "100,000,000", "memory")


def test_the_synthetic_cap_is_enforced_by_the_spec_too():
    from tokenjoule.traces.schema import TraceOptionError
    from tokenjoule.traces.synth import MAX_SYNTHETIC_REQUESTS, SynthSpec

    with pytest.raises(TraceOptionError, match="--requests 100000001: must be in 1.."):
        SynthSpec(MAX_SYNTHETIC_REQUESTS + 1)


@pytest.mark.parametrize("text", ["", " ", ","])
def test_an_empty_synthetic_spec_is_refused_not_the_default_trace(text):
    one_line_error(invoke("simulate", "--profile", TOY, "--synthetic", text), "--synthetic")


@pytest.mark.parametrize(("spec", "needle"), [
    ("n=4,cv=2", "--synthetic cv=2: only process=gamma reads it"),
    ("n=4,rate=3,cv=2", "--synthetic cv=2: only process=gamma reads it"),
    ("n=4,process=gamma", "--synthetic process=gamma: needs rate=R"),  # not 1 request/s by default
    ("n=4,process=poisson", "--synthetic process=poisson: needs rate=R"),
    ("n=4,process=zero,rate=3", "--synthetic rate=3: process=zero puts every request at t=0"),
])
@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_a_synthetic_key_its_process_would_not_read_is_refused(command, spec, needle):
    one_line_error(invoke(command, "--synthetic", spec), needle)


def test_synthetic_keys_its_process_reads_are_accepted():
    result = invoke("simulate", "--profile", TOY, "--synthetic", "n=8,rate=4,process=gamma,cv=3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["requests"] == 8


@pytest.mark.parametrize("command", ["simulate", "compare"])
def test_synthetic_refuses_a_trace_format(command):
    one_line_error(invoke(command, "--synthetic", "n=4", "--format", "mooncake"),
                   "--format: reads a trace file, and --synthetic builds its own trace")


@pytest.mark.parametrize(("args", "flag"), [
    (["--max-batch", "0", "--policy", "static"], "--max-batch 0"),
    (["--max-batched-tokens", "0"], "--max-batched-tokens 0"),
    (["--max-batched-tokens", "0", "--policy", "chunked"], "--max-batched-tokens 0"),
    (["--max-num-seqs", "0"], "--max-num-seqs 0"),
    (["--batch-timeout-s", "-1", "--policy", "static"], "--batch-timeout-s -1"),
])
def test_zero_sizes_are_refused_under_every_policy(args, flag):
    one_line_error(invoke("simulate", *SMALL, *args), flag)


@pytest.mark.parametrize(("args", "flag"), [
    (["--max-batch", "16"], "--max-batch"),
    (["--max-batch", "16", "--policy", "chunked"], "--max-batch"),
    (["--batch-timeout-s", "1", "--policy", "continuous"], "--batch-timeout-s"),
    (["--max-batched-tokens", "4096", "--policy", "static"], "--max-batched-tokens"),
    (["--max-num-seqs", "64", "--policy", "static"], "--max-num-seqs"),
    (["--max-num-seqs", "256", "--policy", "static"], "--max-num-seqs"),  # given, though equal to the default
    (["--max-batch", "8", "--policy", "continuous"], "--max-batch"),
])
def test_a_flag_the_policy_ignores_is_refused(args, flag):
    one_line_error(invoke("simulate", *SMALL, *args), flag, "only --policy")


def test_max_num_seqs_reaches_the_policies_that_read_it(tmp_path):
    for policy in ("continuous", "chunked"):
        out = tmp_path / policy
        result = invoke("simulate", *SMALL, "--policy", policy, "--max-num-seqs", "3", "--out", str(out))
        assert result.exit_code == 0, result.output
        assert json.loads((out / "run.json").read_text())["config"]["max_num_seqs"] == 3


def test_static_flags_still_work_under_static():
    result = invoke("simulate", *SMALL, "--policy", "static", "--max-batch", "4", "--batch-timeout-s", "0.5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["policy"] == "static"


# 5. The two per-request energies have different names


def test_requests_parquet_names_its_energy_apart_from_j_per_request(tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "runs"
    assert invoke("simulate", *SMALL, "--out", str(out)).exit_code == 0
    table = pq.read_table(out / "requests.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert "energy_j" not in table.column_names
    attributed = table.column("gpu_energy_attributed_j").to_numpy()
    assert attributed.sum() == pytest.approx(summary["gpu_busy_j"], rel=1e-9)
    assert attributed.sum() / summary["finished"] == pytest.approx(summary["gpu_j_per_request_attributed"])
    assert summary["j_per_request"] > summary["gpu_j_per_request_attributed"]


def test_readme_documents_both_energies():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "gpu_energy_attributed_j" in readme and "`j_per_request`" in readme


def test_compare_refuses_an_empty_synthetic_spec_too():
    one_line_error(invoke("compare", "--policies", "static", "--profiles", TOY, "--synthetic", ""), "--synthetic")
