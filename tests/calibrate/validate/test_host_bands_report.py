"""docs/validation_hosts.* must be what the committed launch-bound runs say: recompute and compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokenjoule.calibrate.validate import host_bands as hb

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "validation_hosts.json"


@pytest.fixture(scope="module")
def committed() -> dict:
    if not hb.VALIDATION.exists():
        pytest.skip("no validation/ folder (installed package)")
    return json.loads(DOC.read_text())


def test_report_is_a_fresh_recomputation_of_every_launch_bound_run(committed):
    assert committed == json.loads(hb.report_json(hb.build_report()))
    assert (ROOT / "docs" / "validation_hosts.md").read_text() == hb.render_markdown(committed)
    runs = {r["run"] for r in committed["rows"]}
    assert {"h200_2026-12-02_hf", "h200_2026-12-02_hf2", "h200_2026-12-03_hf3", "h200_2026-12-02_run5eager",
            "h200_2026-12-03_models_eager/olmoe-1b-7b"} <= runs
    assert not any("cudagraph" in r or r.endswith("run1") for r in runs)


def test_measured_figures_and_inside_flags_follow_from_the_run_files(committed):
    for row in committed["rows"]:
        lease, _, model = row["run"].partition("/")
        doc = json.loads((hb.VALIDATION / lease / model / "validation.json").read_text())
        sc = next(s for s in doc["scenarios"] if s["scenario"]["name"] == row["scenario"])
        for metric, measured in (("energy", sc["energy_j"]), ("time", sc["duration_s"])):
            m = row[metric]
            assert m["measured"] == measured
            lo, hi = m["band"]
            assert lo <= m["predicted"] <= hi
            assert m["inside"] == (lo <= measured <= hi)


def test_other_host_profiles_come_from_another_gpu_of_the_same_setup(committed):
    uuids = {r["run"]: r["gpu_uuid"] for r in committed["rows"]}
    others = [r for r in committed["rows"] if r["source"] == "other host"]
    assert others
    for row in others:
        assert uuids[row["profile_of"]] != row["gpu_uuid"]
        assert row["model"] == next(r["model"] for r in committed["rows"] if r["run"] == row["profile_of"])
    hf3 = {r["profile_of"] for r in others if r["run"] == "h200_2026-12-03_hf3"}
    assert hf3 == {"h200_2026-12-02_hf", "h200_2026-12-02_hf2", "h200_2026-12-04_hf4"}  # not hf4's carried checks


def test_a_host_check_run_is_priced_carried_as_is_and_by_its_hosts_own_calibration(committed):
    check = {r["source"]: r["profile_of"] for r in committed["rows"]
             if r["run"] == "h200_2026-12-04_hf4check" and r["scenario"] == "hf_static_b4_i1024_o128"}
    assert check["host check"] == "own" and check["own host"] == "h200_2026-12-04_hf4"
    assert check["as is"] == "shipped h200-llama-3.1-8b-hf-eager"


def test_coverage_counts_the_rows(committed):
    rows = committed["rows"]
    overall = next(c for c in committed["coverage"] if c["engine"] == "all" and c["source"] == "all")
    assert overall["n"] == len(rows)
    assert overall["energy_inside"] == pytest.approx(sum(r["energy"]["inside"] for r in rows) / len(rows))


def test_hosts_command_writes_the_report_of_the_runs_given(committed, tmp_path):
    from typer.testing import CliRunner

    from tokenjoule.cli import app

    out = tmp_path / "hosts.md"
    runs = [str(hb.VALIDATION / n) for n in ("h200_2026-12-02_hf2", "h200_2026-12-03_hf3")]
    result = CliRunner().invoke(app, ["validate", "hosts", *runs, "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.with_suffix(".json").read_text())
    assert {r["run"] for r in written["rows"]} == {"h200_2026-12-02_hf2", "h200_2026-12-03_hf3"}
    assert "own host: energy" in result.output and out.read_text().startswith("# Launch-bound")
