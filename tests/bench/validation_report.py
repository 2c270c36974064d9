"""Validation report: simulate every replayed scenario and compare it with what the GPU measured.

Reads the raw files a device run of `python3 -m tokenjoule.calibrate.validate_device` wrote (committed under
`validation/<run>/`): the profile calibrated in that same run, `requests.parquet`, `iterations.parquet`,
`timeline.parquet` and `validation.json`. For each scenario it rebuilds the exact request list (arrival times and
lengths as replayed), simulates it with `tokenjoule.sim.run.run` under the same policy, limits and KV capacity, and
writes `docs/validation.json` (per scenario: measured and simulated values and relative errors), `docs/validation.md`
and a plot of simulated vs measured power (`docs/validation_power.png`).

Besides the primary comparison (the profile of the same run), it reports two diagnostics, neither of which changes
the simulator: the cross-machine error (the shipped H100 profile, measured on another host, simulating the same
scenarios, alone and with this machine's idle power) and the cost model applied to the iterations the engine
actually ran (which separates the cost model's error from scheduling and host-overhead differences).

Run: python3 tests/bench/validation_report.py [--runs validation/h100_2026-11-25] [--docs docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.calibrate.profile import GPUProfile, load_profile
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.files import write_atomic
from tokenjoule.traces.schema import Trace

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUNS = (ROOT / "validation" / "h100_2026-11-25",)
SHIPPED = ROOT / "calibrate" / "profiles" / "h100-llama-3.1-8b-tokenjoule-cudagraph.json"
METRICS = ("energy_total_j", "j_per_request", "duration_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "e2e_p50_s")
TARGETS = {"energy_total_j": ("median", 0.05, "max", 0.10), "tpot_p50_s": ("max", 0.05, None, None),
           "ttft_p50_s": ("max", 0.10, None, None), "e2e_p50_s": ("max", 0.05, None, None)}
PLOT_SCENARIO = "code_continuous_x0.5"


def rel_error(sim: float | None, measured: float | None) -> float | None:
    """(simulated - measured) / measured, or None when either is missing or measured is 0."""
    if sim is None or measured is None or not measured or not np.isfinite(sim) or not np.isfinite(measured):
        return None
    return (sim - measured) / measured


def _pct(values: np.ndarray, q: float) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if len(values) else None


def latency_metrics(arrival_s: np.ndarray, first_s: np.ndarray, finish_s: np.ndarray,
                    output_tokens: np.ndarray) -> dict[str, float | None]:
    """TTFT p50/p99, TPOT p50, E2E p50 (the simulator's definitions, `sim.metrics.request_table`)."""
    out = output_tokens.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (finish_s - first_s) / (out - 1), np.nan)
    ttft, e2e = first_s - arrival_s, finish_s - arrival_s
    return {"ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99), "tpot_p50_s": _pct(tpot, 50),
            "e2e_p50_s": _pct(e2e, 50)}


def measured_metrics(scenario: dict[str, Any], rows: pa.Table) -> dict[str, float | None]:
    """What the GPU run measured for one scenario."""
    col = {c: rows.column(c).to_numpy() for c in ("arrival_s", "first_token_s", "finish_s", "output_tokens")}
    n = scenario["n_finished"]
    out = {"energy_total_j": scenario["energy_j"], "duration_s": scenario["duration_s"],
           "j_per_request": scenario["energy_j"] / n if n else None}
    out.update(latency_metrics(col["arrival_s"], col["first_token_s"], col["finish_s"], col["output_tokens"]))
    return out


def sim_config(scenario: dict[str, Any]) -> SimConfig:
    """The SimConfig that mirrors a replayed scenario's engine settings."""
    s = scenario["scenario"]
    if s["static_batch"]:
        return SimConfig(policy="static", max_batch=s["static_batch"], batch_timeout_s=0.0)
    return SimConfig(policy=s["policy"], max_num_seqs=s["max_num_seqs"], max_batched_tokens=s["max_batched_tokens"])


def scenario_trace(name: str, rows: pa.Table) -> Trace:
    """The replayed requests as a Trace (arrival order)."""
    table = pa.table({"request_id": rows.column("request_id").cast(pa.int64()),
                      "arrival_s": rows.column("arrival_s").cast(pa.float64()),
                      "input_tokens": rows.column("input_tokens").cast(pa.int32()),
                      "output_tokens": rows.column("output_tokens").cast(pa.int32())})
    order = np.argsort(table.column("arrival_s").to_numpy(), kind="stable")
    return Trace(table.take(pa.array(order)), name)


def simulate(scenario: dict[str, Any], rows: pa.Table, profile: GPUProfile, kv_block_tokens: int):
    """Simulate one scenario; returns (metrics dict, SimResult)."""
    config = dataclasses.replace(sim_config(scenario), kv_block_tokens=kv_block_tokens)
    result = run(config, scenario_trace(scenario["scenario"]["name"], rows), profile)
    t = result.requests
    sim = {"energy_total_j": result.summary["energy_total_j"], "duration_s": result.summary["duration_s"],
           "j_per_request": result.summary["j_per_request"], "gpu_idle_j": result.summary["gpu_idle_j"],
           "utilization": result.summary["utilization"]}
    arrival = t.column("arrival_s").to_numpy()
    ttft = t.column("ttft_s").to_numpy()
    e2e = t.column("e2e_s").to_numpy()
    tpot = t.column("tpot_s").to_numpy()
    sim.update({"ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99), "tpot_p50_s": _pct(tpot, 50),
                "e2e_p50_s": _pct(e2e, 50), "finished": int(np.isfinite(arrival + e2e).sum())})
    return sim, result


def iteration_check(its: pa.Table, profile: GPUProfile, duration_s: float) -> dict[str, Any]:
    """The profile's cost model applied to the iterations the engine ran (no scheduling, no queueing).

    Also split by iteration kind (prefill-only, decode-only, mixed = prefill chunks beside decodes): measured and
    predicted GPU-run seconds, and host seconds per iteration outside `ModelRunner.run`.
    """
    feats = {f: its.column(f).to_numpy().astype(np.float64) for f in
             ("prefill_attn_pairs", "prefill_ctx_tokens", "prefill_seqs", "decode_ctx_tokens")}
    new = its.column("new_tokens").to_numpy().astype(np.float64)
    has_prefill = (feats["prefill_seqs"] > 0).astype(np.float64)
    t_pred = profile.latency.evaluate(new, has_prefill=has_prefill, **feats)
    e_pred = profile.energy.evaluate(new, has_prefill=has_prefill, **feats)
    run_col = its.column("run_s").to_numpy()
    host_col = its.column("host_s").to_numpy()
    run_s, host_s = float(run_col.sum()), float(host_col.sum())
    busy_pred = float(np.sum(t_pred))
    energy_pred = float(np.sum(e_pred)) + profile.idle_power_w * max(0.0, duration_s - busy_pred)
    decode = its.column("decode_seqs").to_numpy() > 0
    prefill = feats["prefill_seqs"] > 0
    kinds = {}
    for kind, m in (("prefill", prefill & ~decode), ("decode", decode & ~prefill), ("mixed", prefill & decode)):
        if m.any():
            kinds[kind] = {"n": int(m.sum()), "run_s": float(run_col[m].sum()), "pred_run_s": float(t_pred[m].sum()),
                           "run_time_error": rel_error(float(t_pred[m].sum()), float(run_col[m].sum())),
                           "host_ms_per_iteration": float(host_col[m].mean() * 1e3)}
    return {"iterations": int(its.num_rows), "run_s": run_s, "host_s": host_s, "pred_run_s": busy_pred,
            "run_time_error": rel_error(busy_pred, run_s), "host_share": host_s / duration_s,
            "pred_energy_j": energy_pred, "by_kind": kinds}


def idle_gap_power(its: pa.Table, timeline: pa.Table, clock_start_s: float, duration_s: float,
                   min_gap_s: float = 0.5) -> dict[str, float | None]:
    """Mean sampled power inside idle gaps (no iteration for >= `min_gap_s`), and right after a gap opens."""
    start = its.column("start_s").to_numpy()
    end = start + its.column("run_s").to_numpy() + its.column("host_s").to_numpy()
    t = timeline.column("time_s").to_numpy() - clock_start_s
    p = timeline.column("power_w").to_numpy()
    inside, late = [], []
    for a, b in zip(end[:-1], start[1:], strict=True):
        if b - a >= min_gap_s:
            m = (t > a + 0.05) & (t < b - 0.05)
            inside.extend(p[m])
            late.extend(p[m & (t > a + 0.3)])
    span = (t >= 0) & (t <= duration_s)
    temp = timeline.column("temperature_c").to_numpy()[span]
    return {"gap_power_w": float(np.mean(inside)) if inside else None,
            "gap_power_after_300ms_w": float(np.mean(late)) if late else None,
            "gap_samples": len(inside), "mean_sampled_power_w": float(np.mean(p[span])) if span.any() else None,
            "temperature_max_c": float(np.max(temp)) if len(temp) else None}


def load_run(run_dir: Path) -> dict[str, Any]:
    """The raw files of one device run."""
    doc = json.loads((run_dir / "validation.json").read_text())
    return {"dir": run_dir, "doc": doc, "profile": load_profile(run_dir / doc["profile"]),
            "requests": pq.read_table(run_dir / "requests.parquet"),
            "iterations": pq.read_table(run_dir / "iterations.parquet"),
            "timeline": pq.read_table(run_dir / "timeline.parquet")}


def _calibration_temperature(raw: dict[str, Any]) -> float | None:
    """Median GPU temperature while the sweep ran (timeline samples before the first warm-up replay)."""
    first = min(s["clock_start_s"] for s in raw["doc"].get("warmups", []) + raw["doc"]["scenarios"])
    t = raw["timeline"].column("time_s").to_numpy()
    temp = raw["timeline"].column("temperature_c").to_numpy()[t < first]
    return float(np.median(temp)) if len(temp) else None


def _rows(table: pa.Table, name: str) -> pa.Table:
    return table.filter(pa.compute.equal(table.column("scenario"), name))


def shipped_profile(kv_capacity_tokens: int) -> GPUProfile | None:
    """The shipped H100 profile (refitted from its raw file with the current fitter), KV set to the run's."""
    if not SHIPPED.exists():
        return None
    from tokenjoule.calibrate.refit import refit_profile

    return dataclasses.replace(refit_profile(SHIPPED), kv_capacity_tokens=kv_capacity_tokens)


def build_report(run_dirs: tuple[Path, ...] = DEFAULT_RUNS) -> dict[str, Any]:
    """Every scenario of every run: measured, simulated, relative errors, diagnostics; plus the summary."""
    scenarios, runs = [], []
    for run_dir in run_dirs:
        raw = load_run(run_dir)
        doc, profile = raw["doc"], raw["profile"]
        shipped = shipped_profile(doc["kv_capacity_tokens"])
        shipped_idle = dataclasses.replace(shipped, idle_power_w=profile.idle_power_w) if shipped else None
        runs.append({"run": run_dir.name, "date": doc["date"], "gpu": doc["gpu"]["name"],
                     "driver": doc["gpu"]["driver"], "host_cpu": doc["host"]["cpu_model"],
                     "torch": doc["software"]["torch"], "profile": doc["profile"],
                     "idle_power_w": profile.idle_power_w, "idle_power_end_w": doc.get("idle_power_end_w"),
                     "kv_capacity_tokens": doc["kv_capacity_tokens"], "fit_errors": profile.fit_errors,
                     "calibration_temperature_median_c": _calibration_temperature(raw),
                     "shipped_profile": SHIPPED.name if shipped else None,
                     "shipped_idle_power_w": shipped.idle_power_w if shipped else None,
                     "shipped_host_cpu": shipped.host.get("cpu_model") if shipped else None,
                     "shipped_driver": shipped.gpu.get("driver") if shipped else None,
                     "shipped_date": shipped.date if shipped else None})
        for sc in doc["scenarios"]:
            name = sc["scenario"]["name"]
            rows, its = _rows(raw["requests"], name), _rows(raw["iterations"], name)
            measured = measured_metrics(sc, rows)
            sim, _ = simulate(sc, rows, profile, doc["kv_block_tokens"])
            entry = {"run": run_dir.name, "scenario": name, "spec": sc["scenario"], "n_requests": sc["n_requests"],
                     "measured": measured, "simulated": sim,
                     "error": {m: rel_error(sim[m], measured[m]) for m in METRICS},
                     "iteration_check": iteration_check(its, profile, sc["duration_s"]),
                     "idle_gaps": idle_gap_power(its, raw["timeline"], sc["clock_start_s"], sc["duration_s"])}
            entry["iteration_check"]["energy_error"] = rel_error(entry["iteration_check"]["pred_energy_j"],
                                                                 measured["energy_total_j"])
            for key, prof in (("shipped", shipped), ("shipped_idle", shipped_idle)):
                if prof is not None:
                    other, _ = simulate(sc, rows, prof, doc["kv_block_tokens"])
                    entry[f"error_{key}"] = {m: rel_error(other[m], measured[m]) for m in METRICS}
            scenarios.append(entry)
    return {"kind": "tokenjoule-validation-report", "runs": runs, "scenarios": scenarios,
            "summary": summarize(scenarios, "error"),
            "summary_shipped": summarize(scenarios, "error_shipped"),
            "summary_shipped_idle": summarize(scenarios, "error_shipped_idle"), "targets": TARGETS}


def summarize(scenarios: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Median and max |relative error| per metric over scenarios, and whether each target holds."""
    out: dict[str, Any] = {}
    for m in METRICS:
        errs = [abs(s[key][m]) for s in scenarios if key in s and s[key][m] is not None]
        if not errs:
            continue
        out[m] = {"median_abs": statistics.median(errs), "max_abs": max(errs), "n": len(errs)}
        if m in TARGETS:
            kind, bound, kind2, bound2 = TARGETS[m]
            ok = out[m][f"{kind}_abs"] <= bound and (kind2 is None or out[m][f"{kind2}_abs"] <= bound2)
            out[m]["target"] = f"{kind} <= {bound:.0%}" + (f", {kind2} <= {bound2:.0%}" if kind2 else "")
            out[m]["met"] = bool(ok)
    return out


def _f(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def _e(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def render_markdown(report: dict[str, Any]) -> str:
    """docs/validation.md from the report dict (every figure comes from it)."""
    lines = ["# Validation: simulated vs measured energy and latency", "",
             "Generated by `python3 tests/bench/validation_report.py` from the raw files under `validation/` "
             "(checked by `tests/test_validation_report.py`). Do not edit by hand.", ""]
    for r in report["runs"]:
        lines += [f"**Run `{r['run']}`**: {r['gpu']} (driver {r['driver']}), host {r['host_cpu']}, torch {r['torch']}, "
                  f"{r['date']}. Engine: tokenjoule, CUDA graphs, llama-3.1-8b (random weights, bf16), "
                  f"KV capacity {r['kv_capacity_tokens']} tokens. Profile `{r['profile']}` calibrated in the same "
                  f"device call on the same engine instance (idle {r['idle_power_w']:.1f} W; idle re-measured after "
                  f"the scenarios: {_f(r['idle_power_end_w'])} W; fit CV median latency "
                  f"{r['fit_errors']['latency']['cv_median']:.1%}, energy "
                  f"{r['fit_errors']['energy']['cv_median']:.1%}).",
                  ""]
    lines += ["## Measured vs simulated (profile of the same run)", "",
              "Relative error = (simulated - measured) / measured. Energy is GPU energy (NVML total-energy counter) "
              "over the whole scenario, idle included.", "",
              "| scenario | req | energy J meas / sim | err | J/req meas / sim | err | TTFT p50 ms meas / sim | err "
              "| TTFT p99 ms meas / sim | err | TPOT p50 ms meas / sim | err | E2E p50 s meas / sim | err |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        m, p, e = s["measured"], s["simulated"], s["error"]
        lines.append(
            f"| {s['scenario']} | {s['n_requests']} | {_f(m['energy_total_j'], 0)} / {_f(p['energy_total_j'], 0)} | "
            f"{_e(e['energy_total_j'])} | {_f(m['j_per_request'])} / {_f(p['j_per_request'])} | "
            f"{_e(e['j_per_request'])} | {_f(m['ttft_p50_s'], 0, 1e3)} / {_f(p['ttft_p50_s'], 0, 1e3)} | "
            f"{_e(e['ttft_p50_s'])} | {_f(m['ttft_p99_s'], 0, 1e3)} / {_f(p['ttft_p99_s'], 0, 1e3)} | "
            f"{_e(e['ttft_p99_s'])} | {_f(m['tpot_p50_s'], 2, 1e3)} / {_f(p['tpot_p50_s'], 2, 1e3)} | "
            f"{_e(e['tpot_p50_s'])} | {_f(m['e2e_p50_s'], 2)} / {_f(p['e2e_p50_s'], 2)} | {_e(e['e2e_p50_s'])} |")
    lines += ["", "## Summary over scenarios", "", "| metric | median abs err | max abs err | target | met |",
              "|---|---|---|---|---|"]
    for m in [m for m in METRICS if m in report["summary"]]:
        v = report["summary"][m]
        lines.append(f"| {m} | {v['median_abs']:.1%} | {v['max_abs']:.1%} | {v.get('target', '–')} | "
                     f"{'yes' if v.get('met') else ('no' if 'met' in v else '–')} |")
    lines += ["", "## Diagnostics", "", "Cost model on the iterations the engine actually ran (no scheduling or "
              "queueing in the way): predicted vs measured GPU-run time of those iterations, host time outside "
              "`ModelRunner.run` (scheduler and bookkeeping, not in the profile) as a share of the scenario, and "
              "energy predicted from those iterations plus profile idle power for the rest of the window.", "",
              "| scenario | iterations | run time err | host share | energy err (measured iterations) | "
              "idle-gap power W | idle-gap power after 300 ms W |", "|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        c, g = s["iteration_check"], s["idle_gaps"]
        lines.append(f"| {s['scenario']} | {c['iterations']} | {_e(c['run_time_error'])} | {c['host_share']:.1%} | "
                     f"{_e(c['energy_error'])} | {_f(g['gap_power_w'])} | {_f(g['gap_power_after_300ms_w'])} |")
    lines += ["", "By iteration kind (cost model on the measured iterations; host = scheduler + bookkeeping per "
              "iteration):", "", "| scenario | kind | n | run s measured / predicted | err | host ms/it |",
              "|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        for kind in [k for k in ("prefill", "decode", "mixed") if k in s["iteration_check"]["by_kind"]]:
            k = s["iteration_check"]["by_kind"][kind]
            lines.append(f"| {s['scenario']} | {kind} | {k['n']} | {k['run_s']:.2f} / {k['pred_run_s']:.2f} | "
                         f"{_e(k['run_time_error'])} | {k['host_ms_per_iteration']:.2f} |")
    lines += _findings(report)
    r0 = report["runs"][0]
    lines += ["", "Cross-machine: the shipped profile (`" + str(r0["shipped_profile"]) + f"`, calibrated "
              f"{r0['shipped_date']} in an earlier device lease, host {r0['shipped_host_cpu']}, driver "
              f"{r0['shipped_driver']}, idle {_f(r0['shipped_idle_power_w'])} W) simulating the same scenarios, as "
              "is and with this run's idle power. Both leases were H100 SXM hosts with the same CPU model string and "
              "driver, so this bounds the error between two leases of one machine type, not across vendors or "
              "host CPUs.", "",
              "| metric | shipped: median / max abs err | shipped + local idle: median / max abs err |",
              "|---|---|---|"]
    for m in METRICS:
        a, b = report["summary_shipped"].get(m), report["summary_shipped_idle"].get(m)
        if a and b:
            lines.append(f"| {m} | {a['median_abs']:.1%} / {a['max_abs']:.1%} | "
                         f"{b['median_abs']:.1%} / {b['max_abs']:.1%} |")
    lines += ["", f"![simulated vs measured power, {PLOT_SCENARIO}](validation_power.png)", ""]
    return "\n".join(lines) + "\n"


def _findings(report: dict[str, Any]) -> list[str]:
    """The investigation of missed targets, with its figures taken from the report."""
    sc = {s["scenario"]: s for s in report["scenarios"]}
    mixed = {n: s["iteration_check"]["by_kind"]["mixed"]["run_time_error"] for n, s in sorted(sc.items())
             if "mixed" in s["iteration_check"]["by_kind"]}
    pure = [k["run_time_error"] for s in sc.values() for kind, k in s["iteration_check"]["by_kind"].items()
            if kind != "mixed" and k["n"] >= 20]
    not_chunked = [s for s in sc.values() if s["spec"]["policy"] != "chunked"]
    worst = {m: max(abs(s["error"][m]) for s in not_chunked) for m in ("tpot_p50_s", "ttft_p50_s", "e2e_p50_s")}
    gaps = [s["idle_gaps"]["gap_power_w"] for s in sc.values() if s["idle_gaps"]["gap_power_w"] is not None]
    idle = report["runs"][0]["idle_power_w"]
    host = max(s["iteration_check"]["host_share"] for s in sc.values())
    lines = ["", "## Findings", "",
             f"- **Energy meets its target** (median {report['summary']['energy_total_j']['median_abs']:.1%}, max "
             f"{report['summary']['energy_total_j']['max_abs']:.1%}). Idle power is right: inside idle gaps the GPU "
             f"drew {', '.join(f'{g:.0f}' for g in gaps)} W against the profile's {idle:.0f} W.",
             "- **Latency misses in the chunked-prefill scenarios, and the cause is one cost the fit never sees: "
             "mixed iterations** (prefill chunks beside decodes). On the iterations the engine actually ran, the "
             "profile under-predicts mixed iterations by "
             + ", ".join(f"{e:+.0%} ({n})" for n, e in mixed.items())
             + f", while prefill-only and decode-only iterations (>= 20 of a kind) are within "
             f"{max(abs(e) for e in pure):.0%}. The "
             "engine runs mixed iterations eagerly (only decode-only steps replay CUDA graphs), so the decode rows "
             "pay eager launches and a second attention kernel; the calibration fits prefill and decode iterations "
             "only (mixed points are held out, and this run's reduced grid skipped them). Near saturation the "
             "slower iterations compound through queueing (TTFT p50 of code_chunked_x1: "
             f"{sc['code_chunked_x1']['measured']['ttft_p50_s']:.2f} s measured vs "
             f"{sc['code_chunked_x1']['simulated']['ttft_p50_s']:.2f} s simulated). Energy survives because the "
             "extra time is (likely) launch-bound, at low power: the scenario energy predicted from the measured "
             "iterations plus idle power is within "
             f"{max(abs(sc[n]['iteration_check']['energy_error']) for n in mixed):.1%} in these scenarios. Fix "
             "(calibration, "
             "not a per-scenario tweak): measure mixed iterations and fit them, e.g. a decode-rows term in the "
             "prefill regime.",
             f"- Without the chunked scenarios the worst latency errors are TPOT p50 {worst['tpot_p50_s']:.1%}, "
             f"TTFT p50 {worst['ttft_p50_s']:.1%}, E2E p50 {worst['e2e_p50_s']:.1%}; the largest is "
             "conv_continuous_x3 (near saturation), where its decode steps ran "
             f"{abs(sc['conv_continuous_x3']['iteration_check']['by_kind']['decode']['run_time_error']):.1%} slower "
             "than predicted (likely because decode batches are padded to the next CUDA-graph bucket, which the fit "
             "interpolates over) and host work between iterations, which the profile does not contain, adds "
             f"{sc['conv_continuous_x3']['iteration_check']['host_share']:.1%} (up to {host:.1%} in any scenario).",
             "- static_b64_i128_o512 under-predicts energy by "
             f"{abs(sc['static_b64_i128_o512']['error']['energy_total_j']):.1%} with time within "
             f"{abs(sc['static_b64_i128_o512']['error']['duration_s']):.1%}: its decode steps drew more power than "
             "the calibration's b64 decode points. It ran late (GPU up to "
             f"{sc['static_b64_i128_o512']['idle_gaps']['temperature_max_c']:.0f} C vs a median "
             f"{report['runs'][0]['calibration_temperature_median_c']:.0f} C during the calibration sweep) and the "
             "sweep's energy repeat spread is "
             f"{report['runs'][0]['fit_errors']['repeats']['energy_spread_median']:.1%} (median); thermal drift "
             "is a plausible cause, not an established one."]
    return lines


def plot_power(run_dir: Path, scenario: str, path: Path) -> None:
    """Measured (100 ms samples, and 1 s means) vs simulated (1 s bins) GPU power over one scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = load_run(run_dir)
    doc = raw["doc"]
    sc = next(s for s in doc["scenarios"] if s["scenario"]["name"] == scenario)
    _, result = simulate(sc, _rows(raw["requests"], scenario), raw["profile"], doc["kv_block_tokens"])
    tl = raw["timeline"]
    t = tl.column("time_s").to_numpy() - sc["clock_start_s"]
    p = tl.column("power_w").to_numpy()
    keep = (t >= 0) & (t <= sc["duration_s"])
    edges = np.arange(0.0, sc["duration_s"] + 1.0, 1.0)
    idx = np.digitize(t[keep], edges) - 1
    means = np.array([p[keep][idx == i].mean() if (idx == i).any() else np.nan for i in range(len(edges) - 1)])
    starts, sim_w = result.power_timeline
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(t[keep], p[keep], lw=0.6, color="0.7", label="measured, 100 ms samples")
    ax.step(edges[:-1], means, where="post", color="C0", label="measured, 1 s mean")
    ax.step(starts, sim_w, where="post", color="C3", label="simulated, 1 s bins")
    ax.set_xlabel("time in scenario (s)")
    ax.set_ylabel("GPU power (W)")
    ax.set_title(f"{scenario} on {doc['gpu']['name']}")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def report_json(report: dict[str, Any]) -> str:
    """The report as the JSON text written to docs/validation.json."""
    return json.dumps(report, indent=1, sort_keys=True, default=str) + "\n"


def main() -> None:
    """Build the report and write docs/validation.{json,md} and the power plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", type=Path, default=list(DEFAULT_RUNS))
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = build_report(tuple(args.runs))
    write_atomic(args.docs / "validation.json", lambda tmp: Path(tmp).write_text(report_json(report)))
    write_atomic(args.docs / "validation.md", lambda tmp: Path(tmp).write_text(render_markdown(report)))
    plot_power(args.runs[0], PLOT_SCENARIO, args.docs / "validation_power.png")
    print(render_markdown(report))


if __name__ == "__main__":
    main()
