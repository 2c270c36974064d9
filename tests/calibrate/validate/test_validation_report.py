"""docs/validation.json must be what the committed raw measurement files say: recompute every figure and compare.

Also checks the report's figures independently of its code (measured metrics straight from Parquet, summaries,
run-to-run differences, iteration bins, calibration protocol), and that a Hugging Face generate() run (static
scenarios, HF profile) goes through the same report unchanged, on synthetic run folders built in tmp.
"""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tokenjoule.calibrate.profile import load_profile, save_profile
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.calibrate.validate import host_phases, render
from tokenjoule.calibrate.validate import report as vr
from tokenjoule.calibrate.validate.hf import static_scenario
from tokenjoule.kernels.shape import IterationShape

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "validation.json"
HF_PROFILE = ROOT / "calibrate" / "profiles" / "h100-llama-3.1-8b-hf-eager.json"


@pytest.fixture(scope="module")
def committed():
    return json.loads(DOC.read_text())


def _close(a, b, path=""):
    """Recursive comparison of two JSON values (floats to 1e-9 relative)."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ {set(a) ^ set(b)}"
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12) or (math.isnan(a) and math.isnan(b)), path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _rows(table, name):
    return table.filter(pc.equal(table.column("scenario"), name))


@pytest.mark.slow
def test_report_covers_every_run_folder_and_matches_a_fresh_recomputation(committed):
    assert [r["run"] for r in committed["runs"]] == [d.name for d in vr.default_runs()]
    fresh = json.loads(vr.report_json(vr.build_report()))
    _close(fresh, committed)


def test_measured_values_errors_and_summaries_follow_from_the_raw_files(committed):
    """Independent of the report script: measured figures straight from Parquet/JSON, errors from the pairs."""
    assert len(committed["runs"]) >= 3 and len(committed["scenarios"]) >= 27
    for run in committed["runs"]:
        run_dir = ROOT / "validation" / run["run"]
        doc = json.loads((run_dir / "validation.json").read_text())
        reqs = pq.read_table(run_dir / "requests.parquet")
        totals = {s["scenario"]["name"]: s for s in doc["scenarios"]}
        entries = [e for e in committed["scenarios"] if e["run"] == run["run"]]
        assert [e["scenario"] for e in entries] == list(totals)
        for entry in entries:
            raw = totals[entry["scenario"]]
            assert entry["spec"] == raw["scenario"]
            rows = _rows(reqs, entry["scenario"])
            a, f, z = (rows.column(c).to_numpy() for c in ("arrival_s", "first_token_s", "finish_s"))
            out = rows.column("output_tokens").to_numpy()
            assert np.isfinite(z).all() and len(z) == raw["n_finished"] == entry["n_requests"]
            m = entry["measured"]
            assert m["energy_total_j"] == pytest.approx(raw["energy_j"])
            assert m["j_per_request"] == pytest.approx(raw["energy_j"] / len(z))
            assert m["ttft_p50_s"] == pytest.approx(float(np.median(f - a)))
            assert m["e2e_p50_s"] == pytest.approx(float(np.median(z - a)))
            many = out > 1
            assert m["tpot_p50_s"] == pytest.approx(float(np.median((z - f)[many] / (out[many] - 1))))
            for metric, err in entry["error"].items():
                if err is not None:
                    assert err == pytest.approx((entry["simulated"][metric] - m[metric]) / m[metric])
        energy = [abs(e["error"]["energy_total_j"]) for e in entries]
        assert run["summary"]["energy_total_j"]["median_abs"] == pytest.approx(float(np.median(energy)))
        assert run["summary"]["energy_total_j"]["max_abs"] == pytest.approx(max(energy))
        assert run["summary"]["energy_total_j"]["met"] == (np.median(energy) <= 0.05 and max(energy) <= 0.10)
        assert run["summary"]["ttft_p50_s"]["met"] == (max(abs(e["error"]["ttft_p50_s"]) for e in entries) <= 0.10)
    # check runs (smoke-grid profiles) stay out of the all-runs summary
    checks = set(committed["check_runs"])
    for name in checks:
        grid = json.loads((ROOT / "validation" / name / next(r["profile"] for r in committed["runs"]
                                                              if r["run"] == name)).read_text())["method"]["grid"]
        assert grid["target_s"] == 0.15 and grid["prefill_batches"] == [1, 4]  # GridConfig.quick()
    energy = sorted(abs(e["error"]["energy_total_j"]) for e in committed["scenarios"] if e["run"] not in checks)
    summary = committed["summary"]["energy_total_j"]
    assert summary["max_abs"] == pytest.approx(energy[-1]) and summary["median_abs"] == pytest.approx(
        float(np.median(energy)))


def test_calibration_protocol_follows_from_the_raw_sweeps(committed):
    for run in committed["runs"]:
        run_dir = ROOT / "validation" / run["run"]
        profile = json.loads((run_dir / run["profile"]).read_text())
        raw = pq.read_table(run_dir / profile["raw_path"]).to_pylist()
        points = {(r["kind"], r["point_id"]) for r in raw if r["status"] == "ok" and r["kind"] != "idle"}
        p = run["protocol"]
        assert sum(p["points_by_kind"].values()) == len(points)
        assert p["repeats"] == profile["method"]["grid"]["repeats"]
        n_mixed = p["points_by_kind"].get("mixed", 0)
        assert (p["mixed"] == "not measured") == (n_mixed == 0)
        if p["mixed"] == "fitted" and not run["short_recal"]:
            assert profile["fit_errors"]["latency"]["n_points"] == len(points)
        if run["short_recal"]:  # a short sweep re-scales a shipped profile, which answers for the fit
            assert run["short_recal"]["points"] == len(points) < profile["fit_errors"]["latency"]["n_points"]
    by_name = {r["run"]: r["protocol"] for r in committed["runs"]}
    assert by_name["h200_2026-12-02_run5short"]["mixed"] == "fitted"  # in its base, the shipped H200 profile
    assert by_name["h100_2026-11-25"]["mixed"] == "not measured"
    assert by_name["h100_2026-11-25"]["repeat_order"] == "back-to-back"
    assert by_name["h200_2026-12-02_run1"]["mixed"] == "fitted"
    assert by_name["h200_2026-12-02_run1"]["repeat_order"] == "interleaved"
    # extra passes: counted from the windows past the main repeats, independently of the report's code
    for run in committed["runs"]:
        run_dir = ROOT / "validation" / run["run"]
        profile = json.loads((run_dir / run["profile"]).read_text())
        raw = pq.read_table(run_dir / profile["raw_path"]).to_pylist()
        main = profile["method"]["grid"]["repeats"]
        extra = {r["point_id"] for r in raw if r["status"] == "ok" and r["kind"] != "idle" and r["repeat"] >= main}
        assert run["protocol"]["extra_points"] == len(extra)
    assert by_name["h200_2026-12-02_run6eager"]["extra_points"] == 68 and by_name["h200_2026-12-02_run5"][
        "extra_points"] == 0


def test_host_phase_summary_follows_from_the_check_file(committed):
    hp = host_phases
    (check,) = committed["host_phases"]
    runs = json.loads((ROOT / "calibrate" / "profiles" / "checks" / check["file"]).read_text())["runs"]
    eager = check["engines"]["tokenjoule-eager"]
    plain = [r["median_ms"] for r in runs if r["engine"] == "tokenjoule-eager" and r["condition"] == "plain"]
    assert eager["plain_median_ms_by_round"] == pytest.approx(plain)
    # one round by hand: the counter readers' mean median over the others'
    r0 = {r["condition"]: r["median_ms"] for r in runs if r["engine"] == "tokenjoule-eager" and r["round"] == 0}
    readers = [r0[c] for c in hp.READS_COUNTER]
    rest = [v for c, v in r0.items() if c not in hp.READS_COUNTER]
    assert eager["counter_readers_over_rest_by_round"][0] == pytest.approx(np.mean(readers) / np.mean(rest))
    assert eager["median_ms_range"][0] <= min(plain) and eager["median_ms_range"][1] >= max(plain)


def test_run_to_run_differences_follow_from_the_raw_files(committed):
    """The H200 pair (same GPU UUID) is compared scenario by scenario, straight from both runs' files."""
    pairs = {(p["run_a"], p["run_b"]): p for p in committed["repeatability"]}
    pair = pairs[("h200_2026-12-02_run1", "h200_2026-12-02_run2")]
    assert pair["facts"]["same_uuid"] and pair["facts"]["runs_gap_s"] >= 0
    docs = [json.loads((ROOT / "validation" / r / "validation.json").read_text()) for r in ("h200_2026-12-02_run1",
                                                                                           "h200_2026-12-02_run2")]
    reqs = [pq.read_table(ROOT / "validation" / r / "requests.parquet") for r in ("h200_2026-12-02_run1",
                                                                                 "h200_2026-12-02_run2")]
    assert len(pair["scenarios"]) == len(docs[0]["scenarios"])
    for s in pair["scenarios"]:
        energy = [next(x["energy_j"] for x in d["scenarios"] if x["scenario"]["name"] == s["scenario"]) for d in docs]
        assert s["difference"]["energy_total_j"] == pytest.approx((energy[1] - energy[0]) / energy[0])
        ttft = [float(np.median(_rows(t, s["scenario"]).column("first_token_s").to_numpy()
                                - _rows(t, s["scenario"]).column("arrival_s").to_numpy())) for t in reqs]
        assert s["difference"]["ttft_p50_s"] == pytest.approx((ttft[1] - ttft[0]) / ttft[0])
        assert s["same_requests"]


def test_iteration_bins_count_the_scenario_iterations(committed):
    for run in committed["runs"]:
        run_dir = ROOT / "validation" / run["run"]
        names = [s["scenario"] for s in committed["scenarios"] if s["run"] == run["run"]]
        its = pq.read_table(run_dir / "iterations.parquet")
        its = its.filter(pc.is_in(its.column("scenario"), value_set=pa.array(names)))
        seqs, pre = its.column("decode_seqs").to_numpy(), its.column("prefill_seqs").to_numpy()
        run_s = its.column("run_s").to_numpy()
        decode = (seqs > 0) & (pre == 0)
        bins = run["iteration_bins"]["decode_by_batch"]
        assert sum(b["n"] for b in bins) == int(decode.sum())
        for b in bins:
            m = decode & (seqs >= b["lo"]) & (seqs < b["hi"])
            assert b["n"] == int(m.sum()) and b["run_ms"] == pytest.approx(float(run_s[m].mean() * 1e3))
        assert sum(b["n"] for b in run["iteration_bins"]["mixed_by_chunk"]) == int(((seqs > 0) & (pre > 0)).sum())


def test_markdown_is_rendered_from_the_report(committed):
    text = (ROOT / "docs" / "validation.md").read_text()
    assert text == render.render_markdown(committed)
    assert (ROOT / "docs" / "validation_power.png").stat().st_size > 1000
    assert "not fitted" not in text and "held out" not in text  # every profile here fits its mixed points or has none


def _hf_run(run_dir: Path, scale_energy: float, rng) -> None:
    """A synthetic HF generate() run folder in validate_hf's format, timed and metered by its own profile."""
    run_dir.mkdir()
    profile = load_profile(HF_PROFILE)
    raw = pq.read_table(HF_PROFILE.with_name(profile.raw_path))
    pq.write_table(raw, run_dir / "profile-llama-3.1-8b-hf-eager.raw.parquet")
    # each run its own calibration (another idle reading), as two device runs would have
    profile = dataclasses.replace(profile, raw_path="profile-llama-3.1-8b-hf-eager.raw.parquet",
                                  idle_power_w=profile.idle_power_w + 10 * (scale_energy - 1.0))
    save_profile(profile, run_dir / "profile-llama-3.1-8b-hf-eager.json")
    scenarios, reqs, its, clock = [], [], [], 100.0
    for s in (static_scenario(4, 2, 1024, 16), static_scenario(8, 1, 256, 24)):
        b, n_in, n_out = s.static_batch, s.static_input_tokens, s.static_output_tokens
        t, energy = 0.0, 0.0
        for k in range(s.static_batches):
            shapes = [IterationShape(prefill=((n_in, 0),) * b)] + [IterationShape(decode=(c,) * b)
                                                                 for c in range(n_in, n_in + n_out - 1)]
            first = None
            for shape in shapes:
                run_s, e = profile.cost(shape)
                its.append({"scenario": s.name, "prefill_tokens": shape.prefill_tokens,
                            "prefill_seqs": shape.prefill_seqs, "decode_seqs": shape.decode_seqs,
                            "new_tokens": shape.new_tokens, "prefill_attn_pairs": shape.prefill_attn_pairs,
                            "prefill_ctx_tokens": shape.prefill_ctx_tokens,
                            "decode_ctx_tokens": shape.decode_ctx_tokens, "start_s": t, "run_s": run_s, "host_s": 0.0})
                t, energy = t + run_s, energy + e
                first = t if first is None else first
            reqs += [{"scenario": s.name, "request_id": k * b + i, "arrival_s": 0.0, "input_tokens": n_in,
                      "output_tokens": n_out, "first_token_s": first, "finish_s": t} for i in range(b)]
        scenarios.append({"scenario": dataclasses.asdict(s), "n_requests": b * s.static_batches,
                          "n_finished": b * s.static_batches, "completed": True, "duration_s": t,
                          "energy_j": energy * scale_energy, "clock_start_s": clock})
        clock += t + 5.0
    pq.write_table(pa.Table.from_pylist(reqs), run_dir / "requests.parquet")
    pq.write_table(pa.Table.from_pylist(its), run_dir / "iterations.parquet")
    times = np.arange(0.0, clock, 0.1)
    pq.write_table(pa.table({"time_s": times, "gpu": np.zeros(len(times), dtype=np.int64),
                             "power_w": 300.0 + rng.normal(0, 5, len(times)),
                             "temperature_c": np.full(len(times), 50.0), "sm_clock_mhz": np.full(len(times), 1980.0)}),
                   run_dir / "timeline.parquet")
    gpu = {"name": profile.gpu["name"], "driver": "580.159.04", "power_limit_w": 700.0,
           "devices": [{"index": 0, "uuid": "GPU-synthetic-0"}]}
    doc = {"kind": "tokenjoule-validation-run",
           "date": "2026-12-03T10:00:00+00:00" if scale_energy == 1.0 else "2026-12-03T10:05:00+00:00",
           "run_wall_s": 200.0, "model": "llama-3.1-8b", "gpu": gpu, "host": {"cpu_model": "synthetic"},
           "software": {"torch": "2.13.0"}, "kv_capacity_tokens": profile.kv_capacity_tokens, "kv_block_tokens": 1,
           "profile": "profile-llama-3.1-8b-hf-eager.json", "engine": "hf", "scenarios": scenarios,
           "idle_power_end_w": profile.idle_power_w}
    (run_dir / "validation.json").write_text(json.dumps(doc))


def test_an_hf_generate_run_goes_through_the_report_with_its_own_policy_and_profile(tmp_path, rng):
    """Static HF scenarios are simulated with the static policy and the run's HF profile; a run timed and metered by
    its own profile is simulated back to within a fraction of a percent, and two runs on one GPU pair up."""
    _hf_run(tmp_path / "hf_a", 1.0, rng)
    _hf_run(tmp_path / "hf_b", 1.02, rng)
    report = json.loads(vr.report_json(vr.build_report((tmp_path / "hf_a", tmp_path / "hf_b"))))
    assert [r["engine"] for r in report["runs"]] == ["hf", "hf"]
    assert report["runs"][0]["protocol"]["mixed"] == "not measured"
    for s in report["scenarios"]:
        assert s["spec"]["policy"] == "static" and vr.sim_config({"scenario": s["spec"]}).policy == "static"
        assert "mixed" not in s["iteration_check"]["by_kind"] and s["iteration_check"]["stalls"] == 0
        cost = static_batch_cost(load_profile(HF_PROFILE), s["spec"]["static_batch"],
                                 s["spec"]["static_input_tokens"], s["spec"]["static_output_tokens"])
        assert s["simulated"]["duration_s"] == pytest.approx(cost["time_s"] * s["spec"]["static_batches"], rel=0.01)
        for m in ("duration_s", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s"):
            assert abs(s["error"][m]) < 0.01, (s["run"], s["scenario"], m)
        assert s["error"]["energy_total_j"] == pytest.approx(0.0 if s["run"] == "hf_a" else 1 / 1.02 - 1, abs=0.01)
    (pair,) = report["repeatability"]
    assert pair["facts"]["same_uuid"] and pair["facts"]["earlier_run"] == "hf_a"
    for s in pair["scenarios"]:
        assert s["difference"]["energy_total_j"] == pytest.approx(0.02) and s["difference"]["ttft_p50_s"] == 0.0
    assert sorted(c["source"] for c in report["carry_over"]) == ["run hf_a", "run hf_b"]
    # both runs hold the shipped HF sweep, whose points include the short re-calibration's: that variant is there
    assert all(c["summary_short_recal"]["energy_total_j"]["n"] == 2 for c in report["carry_over"])
    text = render.render_markdown(report)
    assert "hf/eager" in text and "## Findings" in text and "hf_static_b4_i1024_o16" in text


def test_report_command_writes_the_report_of_any_run_folders(tmp_path, rng):
    """`tokenjoule validate report` on a user's run folders (given as their parent folder): Markdown, JSON, plot."""
    from tokenjoule.cli import main

    runs = tmp_path / "runs"
    runs.mkdir()
    _hf_run(runs / "hf_a", 1.0, rng)
    _hf_run(runs / "hf_b", 1.02, rng)
    out = tmp_path / "out" / "acc.md"
    assert main(["validate", "report", str(runs), "--out", str(out)]) == 0
    report = json.loads((tmp_path / "out" / "acc.json").read_text())
    assert [r["run"] for r in report["runs"]] == ["hf_a", "hf_b"]
    assert out.read_text() == render.render_markdown(report, "acc_power.png")
    assert "](acc_power.png)" in out.read_text() and (tmp_path / "out" / "acc_power.png").stat().st_size > 1000
    assert main(["validate", "report", str(tmp_path / "out"), "--out", str(tmp_path / "x.md")]) == 2  # no run there
