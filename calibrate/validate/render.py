"""docs/validation.md and the power plot, rendered from the validation report dict (every figure comes from it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tokenjoule.calibrate.validate.findings import findings
from tokenjoule.traces.files import write_atomic

HEADLINE = ("energy_total_j", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s")  # the targeted metrics, in table order
UNITS = {"energy_total_j": ("energy J", 1.0, 0), "duration_s": ("duration s", 1.0, 1),  # (label, scale, digits)
         "ttft_p50_s": ("TTFT p50 ms", 1e3, 0), "tpot_p50_s": ("TPOT p50 ms", 1e3, 2),
         "e2e_p50_s": ("E2E p50 s", 1.0, 2)}


def _f(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def _e(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _pair(a: float | None, b: float | None, metric: str) -> str:
    _, scale, digits = UNITS[metric]
    return f"{_f(a, digits, scale)} / {_f(b, digits, scale)}"


def _run_header(r: dict[str, Any]) -> list[str]:
    p, fit = r["protocol"], r["fit_errors"]
    uuid = f"UUID {r['gpu_uuid']}" if r["gpu_uuid"] else "GPU UUID not recorded"
    machine = (f"{r['gpu']} ({uuid}, driver {r['driver']}, power limit {_f(r['power_limit_w'], 0)} W), host "
               f"{r['host_cpu']}, torch {r['torch']}, run finished {r['date']}")
    engine = (f"Engine {r['engine']}/{r['mode']}, {r['model']} (random weights), KV capacity "
              f"{r['kv_capacity_tokens']} tokens")
    kinds = ", ".join(f"{k} {n}" for k, n in p["points_by_kind"].items())
    mixed_cv = fit["latency"].get("mixed_median")
    origin = ("calibrated in an earlier device call on the same GPU (UUID checked) and reused"
              if r.get("profile_reused") else "calibrated in the same device call on the same engine instance")
    cv = (f"fit CV median latency {fit['latency']['cv_median']:.1%}"
          + (f" (mixed points {mixed_cv:.1%})" if mixed_cv is not None else "")
          + f", energy {fit['energy']['cv_median']:.1%}")
    short = r.get("short_recal")
    if short:
        errs = short["errors"] or {}
        calibration = (
            f"Profile `{r['profile']}`, a SHORT RE-CALIBRATION measured in this device call: {short['points']} grid "
            f"points ({kinds}), idle power and the serving loop's host overhead, the points' windows ending within "
            f"{_f(short['sweep_span_s'], 0)} s, re-scale the full profile calibrated {short['base_date']} on another "
            f"{short['base_gpu']} (content sha256 {short['base_sha256'][:12]}): {short['scales']}; the re-scaled "
            f"curves meet the points measured here within median latency "
            f"{_f(errs.get('latency_median_abs_error'), 1, 100)}%, energy "
            f"{_f(errs.get('energy_median_abs_error'), 1, 100)}%; the base's {cv}; idle "
            f"{r['idle_power_w']:.1f} W (re-measured after the scenarios: {_f(r['idle_power_end_w'])} W)")
    else:
        calibration = (
            f"Profile `{r['profile']}`, {origin}: "
            f"{p['fitted_points']} fitted grid points (raw points: {kinds}), mixed iterations {p['mixed']}, "
            f"{p['repeats']} repeats ({p['repeat_order']}){_extra_passes(p)}, {_f(p['target_s'], 1)} s windows; "
            f"{cv}; sweep repeat "
            f"spread median time {fit['repeats']['time_spread_median']:.1%}, energy "
            f"{fit['repeats']['energy_spread_median']:.1%}; idle "
            f"{r['idle_power_w']:.1f} W (re-measured after the scenarios: {_f(r['idle_power_end_w'])} W)")
    stalls = (f"Stalls (see Diagnostics): {r['stalls']['warmups']} in the warm-up replays, "
              f"{r['stalls']['scenarios']} in the scenarios ({r['stalls']['scenario_excess_s']:.1f} s beyond their "
              "predicted time)")
    return [f"**Run `{r['run']}`**: {machine}. {engine}. {calibration}. {stalls}.", ""]


def _extra_passes(p: dict[str, Any]) -> str:
    """', plus N more for the K points ...' when the sweep gave its noisy points extra passes, else ''."""
    if not p.get("extra_points"):
        return ""
    return (f", plus {p['extra_repeats']} more for the {p['extra_points']} points whose first {p['repeats']} "
            f"spread by over {_f(p['noisy_spread'], 0, 100)}%")


def _scenario_table(entries: list[dict[str, Any]]) -> list[str]:
    lines = ["| scenario | policy | req | energy J meas / sim | err | J/req meas / sim | err | TTFT p50 ms meas / sim "
             "| err | TTFT p99 ms meas / sim | err | TPOT p50 ms meas / sim | err | E2E p50 s meas / sim | err |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in entries:
        m, p, e = s["measured"], s["simulated"], s["error"]
        policy = s["spec"]["policy"] + (f", static {s['spec']['static_batch']}" if s["spec"]["static_batch"] else "")
        lines.append(
            f"| {s['scenario']} | {policy} | {s['n_requests']} | "
            f"{_pair(m['energy_total_j'], p['energy_total_j'], 'energy_total_j')} | "
            f"{_e(e['energy_total_j'])} | {_f(m['j_per_request'])} / {_f(p['j_per_request'])} | "
            f"{_e(e['j_per_request'])} | {_pair(m['ttft_p50_s'], p['ttft_p50_s'], 'ttft_p50_s')} | "
            f"{_e(e['ttft_p50_s'])} | {_f(m['ttft_p99_s'], 0, 1e3)} / {_f(p['ttft_p99_s'], 0, 1e3)} | "
            f"{_e(e['ttft_p99_s'])} | {_pair(m['tpot_p50_s'], p['tpot_p50_s'], 'tpot_p50_s')} | "
            f"{_e(e['tpot_p50_s'])} | {_pair(m['e2e_p50_s'], p['e2e_p50_s'], 'e2e_p50_s')} | {_e(e['e2e_p50_s'])} |")
    return lines


def _met(v: dict[str, Any]) -> str:
    met = f" ({'met' if v['met'] else 'MISSED'})" if "met" in v else ""
    return f"{v['median_abs']:.1%} / {v['max_abs']:.1%}{met}"


def _check_note(report: dict[str, Any]) -> str:
    if not report["check_runs"]:
        return ""
    names = ", ".join(f"`{n}`" for n in report["check_runs"])
    return (f" Check runs ({names}) were calibrated on the smoke grid, so their own-profile columns judge that grid, "
            "not the simulator; they are left out of \"all runs\" and judged by the other runs' profiles under "
            "Carry-over.")


def _summary(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    lines = ["## Summary over scenarios", "",
             "Median / max |relative error| over each run's scenarios and over all runs together; a target is met only "
             "if it holds for that set of scenarios." + _check_note(report), "",
             "| metric | target | " + " | ".join(f"`{r['run']}`" for r in runs) + " | all runs |",
             "|---|---|" + "---|" * (len(runs) + 1)]
    for m in [m for m in report["metrics"] if m in report["summary"]]:
        v = report["summary"][m]
        cells = [_met(r["summary"][m]) if m in r["summary"] else "–" for r in runs]
        lines.append(f"| {m} | {v.get('target', '–')} | " + " | ".join(cells) + f" | {_met(v)} |")
    return lines + [""]


def _relation(facts: dict[str, Any]) -> str:
    """Plain words for what a pair of calibrations is."""
    gap = f"calibrated {facts['calibrations_apart_min']:.0f} min apart"
    same = facts["driver_a"] == facts["driver_b"] and facts["host_cpu_a"] == facts["host_cpu_b"]
    setup = f"driver and host CPU string {'match' if same else 'differ'}"
    if facts["same_uuid"]:
        after = (f"; `{facts['later_run']}` started {facts['runs_gap_s']:.0f} s after `{facts['earlier_run']}` ended"
                 if facts["runs_gap_s"] is not None and facts["runs_gap_s"] >= 0 else "")
        return (f"the same physical GPU (UUID {facts['uuid_a']}; {setup}), {gap}{after} (lease history in "
                "validation/README.md). This is calibration-to-calibration repeatability on one machine, NOT a "
                "different host.")
    known = "different GPUs (UUIDs differ)" if facts["same_uuid"] is False else "GPU UUID not recorded"
    return (f"two {facts['gpu_a']} calibrations, {gap} ({known}; {setup}; lease history in validation/README.md). "
            "This bounds the error between two calibrations of one machine type, not across GPU models, vendors or "
            "host CPUs.")


def _repeatability(report: dict[str, Any]) -> list[str]:
    lines = ["## Repeatability: the same scenarios measured in two runs on one GPU", ""]
    if not report["repeatability"]:
        return lines + ["No two runs share a GPU UUID and setup, so no run-to-run noise floor is available.", ""]
    for pair in report["repeatability"]:
        a, b = pair["run_a"], pair["run_b"]
        lines += [f"`{a}` (a) vs `{b}` (b): {_relation(pair['facts'])} Difference = (b - a) / a of the measured "
                  "value: the measurement's own noise floor, beside each run's simulator error (own profile).", "",
                  "| scenario | same requests | " + " | ".join(f"{UNITS[m][0]} a / b | diff | sim err a / b"
                                                             for m in HEADLINE) + " |",
                  "|---|---|" + "---|---|---|" * len(HEADLINE)]
        for s in pair["scenarios"]:
            cells = [f"{_pair(s['measured_a'][m], s['measured_b'][m], m)} | {_e(s['difference'][m])} | "
                     f"{_e(s['error_a'][m])} / {_e(s['error_b'][m])}" for m in HEADLINE]
            lines.append(f"| {s['scenario']} | {'yes' if s['same_requests'] else 'NO'} | " + " | ".join(cells) + " |")
        lines += ["", "| metric | median / max abs run-to-run difference | median abs sim error a / b |",
                  "|---|---|---|"]
        for m in [m for m in report["metrics"] if m in pair["summary"]]:
            v = pair["summary"][m]
            lines.append(f"| {m} | {v['median_abs_difference']:.1%} / {v['max_abs_difference']:.1%} | "
                         f"{_f(v['median_abs_error_a'], 1, 100)}% / {_f(v['median_abs_error_b'], 1, 100)}% |")
        lines.append("")
    return lines


def _carry_over(report: dict[str, Any]) -> list[str]:
    lines = ["## Carry-over: each run simulated with another calibration of its GPU type", "",
             "Each run's scenarios simulated with a profile from another calibration of the same GPU type and engine "
             "(the newest one of each other GPU; the shipped profile, refitted, where no other run exists), as is and "
             "after a short re-calibration on the run's machine (`calibrate/recalibrate.py`: the run's idle power and "
             "host overhead, and the curves scaled by the median ratio of the run's own measurements to the source's "
             "measurements at a few grid points, `SHORT_GRID`'s; to the source's curves at a point it did not "
             "measure). KV capacity is the run's.", ""]
    if not report["carry_over"]:
        return lines + ["No run has another calibration of its GPU type and setup.", ""]
    for c in report["carry_over"]:
        recal = f"; short re-calibration: {c['short_recal_notes']}" if c.get("short_recal_notes") else ""
        lines.append(f"- `{c['run']}` with {c['source']} (idle {c['source_idle_power_w']:.1f} W vs the run's "
                     f"{c['run_idle_power_w']:.1f} W{recal}): {_relation(c['facts'])}")
    metrics = [m for m in ("energy_total_j", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s") if m in report["summary"]]
    lines += ["", "Median / max |relative error|, as is → after the short re-calibration (– where the run's sweep "
              "lacks the points):", "", "| run | profile from | " + " | ".join(metrics) + " |",
              "|---|---|" + "---|" * len(metrics)]
    for c in report["carry_over"]:
        lines.append(f"| `{c['run']}` | {c['source']} | " + " | ".join(_carry_cell(c, m) for m in metrics) + " |")
    return lines + [""]


def _carry_cell(c: dict[str, Any], metric: str) -> str:
    """'median / max' as is, then after the short re-calibration."""
    a, b = c["summary"].get(metric), (c.get("summary_short_recal") or {}).get(metric)
    first = f"{a['median_abs']:.1%} / {a['max_abs']:.1%}" if a else "–"
    return first + (f" → {b['median_abs']:.1%} / {b['max_abs']:.1%}" if b else " → –")


def _iterations(report: dict[str, Any]) -> list[str]:
    lines = ["## Diagnostics: the cost model on the iterations the engine ran", "",
             "No scheduling or queueing in the way: predicted vs measured GPU-run time of the iterations each scenario "
             "ran, host time outside `ModelRunner.run` (scheduler and bookkeeping, not in the profile) as a share of "
             "the scenario, and energy predicted from those iterations plus profile idle power for the rest of the "
             "window.", "",
             "A stall is an iteration that ran more than 4x its predicted time and over 0.2 s longer: a one-off cost "
             "(no property of the iteration's shape, so no cost form fits it); errors are also given without them.", "",
             "| run | scenario | iterations | run time err | stalls (excess s) | host share | energy err (measured "
             "iterations) | idle-gap power W | idle-gap power after 300 ms W |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        c, g = s["iteration_check"], s["idle_gaps"]
        lines.append(f"| {s['run']} | {s['scenario']} | {c['iterations']} | {_e(c['run_time_error'])} | "
                     f"{c['stalls']} ({c['stall_excess_s']:.1f}) | {c['host_share']:.1%} | {_e(c['energy_error'])} | "
                     f"{_f(g['gap_power_w'])} | {_f(g['gap_power_after_300ms_w'])} |")
    lines += ["", "By iteration kind (host = scheduler + bookkeeping per iteration):", "",
              "| run | scenario | kind | n | run s measured / predicted | err | stalls | err without stalls | "
              "host ms/it |", "|---|---|---|---|---|---|---|---|---|"]
    for s in report["scenarios"]:
        by_kind = s["iteration_check"]["by_kind"]
        for kind in [k for k in ("prefill", "decode", "mixed") if k in by_kind]:
            k = by_kind[kind]
            lines.append(f"| {s['run']} | {s['scenario']} | {kind} | {k['n']} | {k['run_s']:.2f} / "
                         f"{k['pred_run_s']:.2f} | {_e(k['run_time_error'])} | {k['stalls']} | "
                         f"{_e(k['run_time_error_without_stalls'])} | {k['host_ms_per_iteration']:.2f} |")
    for key, title, unit in (("decode_by_batch", "Decode-only iterations by batch size", "sequences"),
                             ("mixed_by_chunk", "Mixed iterations by prefill chunk size", "prefill tokens")):
        lines += ["", f"{title} (all scenarios of a run; mean run time per iteration):", "",
                  f"| run | {unit} | n | mean run ms measured / predicted | err | stalls | err without stalls |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["runs"]:
            for b in r["iteration_bins"][key]:
                hi = f"{b['hi']})" if b["hi"] < 1 << 20 else "...)"
                lines.append(f"| {r['run']} | [{b['lo']}, {hi} | {b['n']} | {b['run_ms']:.2f} / "
                             f"{b['pred_run_ms']:.2f} | {_e(b['run_time_error'])} | {b['stalls']} | "
                             f"{_e(b['run_time_error_without_stalls'])} |")
    return lines + [""]


def render_markdown(report: dict[str, Any], plot_name: str = "validation_power.png") -> str:
    """docs/validation.md from the report dict.

    Args:
        report: the report as `report.report_json` writes it.
        plot_name: the power plot's file name, beside the Markdown.
    """
    lines = ["# Validation: simulated vs measured energy and latency", "",
             "Generated by `tokenjoule validate report validation` from the raw files under `validation/` "
             "(checked by `tests/calibrate/validate/test_validation_report.py`). Do not edit by hand. "
             "Simulated figures are modeled; "
             "measured ones come from the runs' files.", "", "## Runs", ""]
    for r in report["runs"]:
        lines += _run_header(r)
    lines += ["## Measured vs simulated (each run's own profile)", "",
              "Relative error = (simulated - measured) / measured. Energy is GPU energy (NVML total-energy counter) "
              "over the whole scenario, idle included. Offline scenarios (static N) are simulated with the static "
              "policy (batches released one at a time), online ones with their own policy.", ""]
    for r in report["runs"]:
        lines += [f"### `{r['run']}` ({r['gpu']}, {r['engine']}/{r['mode']})", ""]
        lines += _scenario_table([s for s in report["scenarios"] if s["run"] == r["run"]]) + [""]
    lines += _summary(report) + _repeatability(report) + _carry_over(report) + _iterations(report)
    lines += findings(report)
    plot = report["plot"]
    lines += ["", f"![simulated vs measured power, {plot['scenario']} of {plot['run']}]({plot_name})", ""]
    return "\n".join(lines) + "\n"


def plot_power(run: dict[str, Any], scenario: str, sims: Any, path: Path) -> None:
    """Measured (100 ms samples, and 1 s means) vs simulated (1 s bins) GPU power over one scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = next(s for s in run["doc"]["scenarios"] if s["scenario"]["name"] == scenario)
    _, result = sims.get(run, sc, run["profile"])
    tl = run["timeline"]
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
    ax.step(starts, sim_w, where="post", color="C3", label="simulated (modeled), 1 s bins")
    ax.set_xlabel("time in scenario (s)")
    ax.set_ylabel("GPU power (W)")
    ax.set_title(f"{scenario} on {run['doc']['gpu']['name']} ({run['name']})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
