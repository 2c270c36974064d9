"""Coverage of the launch-bound host band: how often a replay's measured energy and time fall inside the p10-p90 band.

For every committed replay run whose profile is launch-bound (eager mode, HF `generate()`), each scenario is
simulated with its own host's profile and with every other host's profile of the same setup (same GPU type, model,
engine, mode; another GPU UUID, i.e. another device lease), each carrying the band its own calibration's repeated
windows gave (`calibrate.fit_sweep.host_band`, as `simulate` shows it). The report counts how many measured figures
fall inside [p10, p90]. It also says, per host, how much of a step was host time where the same model's CUDA-graph
profile of the same GPU type prices the GPU's own time (run_s - graph time per iteration), and what the GPU drew.

Command: `tokenjoule validate hosts [RUN_DIR...] [--out docs/validation_hosts.md]` (JSON beside the Markdown).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenjoule.calibrate.fit_sweep import host_band
from tokenjoule.calibrate.profile import GPUProfile, load_profile, shipped_profiles
from tokenjoule.calibrate.validate.diagnostics import gpu_uuid, predicted_run_s, short_recal_base
from tokenjoule.calibrate.validate.report import (
    VALIDATION,
    Simulations,
    is_check_run,
    is_run_folder,
    load_run,
    scenario_rows,
)
from tokenjoule.sim.run import host_band_keys
from tokenjoule.sim.tp_profiles import same_setup
from tokenjoule.traces.files import write_atomic

TARGET = 0.80  # share of measured figures inside the p10-p90 band (issue 19)


def launch_bound_runs(root: Path = VALIDATION) -> tuple[Path, ...]:
    """Every run folder under `root` (or one level deeper: a lease's model folders) with a launch-bound profile."""
    folders = sorted({p.parent for p in [*root.glob("*/validation.json"), *root.glob("*/*/validation.json")]
                      if is_run_folder(p.parent)})
    out = []
    for folder in folders:
        doc = json.loads((folder / "validation.json").read_text())
        if load_profile(folder / doc["profile"]).launch_bound:
            out.append(folder)
    return tuple(out)


def with_band(run: dict[str, Any]) -> GPUProfile:
    """The run's profile with the band of its own raw sweep (profiles written before the band was recorded lack it)."""
    profile = run["profile"]
    return profile if profile.host_band is not None else dataclasses.replace(profile, host_band=host_band(run["raw"]))


def _name(run: dict[str, Any]) -> str:
    """A run's name; a lease's model folder is named with its lease (`lease/model`)."""
    return run["name"] if run["dir"].parent == VALIDATION else f"{run['dir'].parent.name}/{run['name']}"


def _carried(run: dict[str, Any]) -> bool:
    """Whether the run's profile is another host's, carried here by a host check (`--short-from`)."""
    return bool(run["profile"].method.get("short_recalibration_of"))


def sources(run: dict[str, Any], runs: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, label, source run) pairs: the host check's carried profile, the host's own calibration, each other host's.

    A run replayed against a host check (`--short-from`) is priced by that carried profile ("host check"), by the
    shipped profile it carried as that is ("as is": before the check), and by the newest full calibration of its own
    GPU, if one was made ("own host"); other runs by their own profile. Other
    hosts: one per other GPU UUID, its newest full calibration (check runs, reused and carried profiles aside).
    """
    uuid = gpu_uuid(run["doc"]["gpu"])
    full: dict[str, dict[str, Any]] = {}
    for other in sorted(runs, key=lambda o: o["profile"].date):
        if (not is_check_run(other) and not other["doc"].get("profile_reused") and not _carried(other)
                and same_setup(other["profile"], run["profile"]) and other["profile"].tp == run["profile"].tp):
            full[gpu_uuid(other["doc"]["gpu"])] = other
    if not _carried(run):
        out = [("own host", "own", run)]
    else:
        base = short_recal_base(run["profile"])
        out = [("host check", "own", run)] + ([("own host", _name(full[uuid]), full[uuid])] if uuid in full else [])
        out += [("as is", f"shipped {base[0].stem}", {"profile": base[1], "raw": []})] if base else []
    out += [("other host", _name(o), o) for u, o in sorted(full.items(), key=lambda kv: _name(kv[1])) if u != uuid]
    return out


def band_rows(runs: list[dict[str, Any]], sims: Simulations) -> list[dict[str, Any]]:
    """One row per (scenario, profile source): prediction, band, measurement, inside or not, for energy and time."""
    rows = []
    for run in runs:
        for kind, label, src in sources(run, runs):
            profile = with_band(src)
            for sc in run["doc"]["scenarios"]:
                _, result = sims.get(run, sc, profile)
                keys = host_band_keys(result.summary, profile)
                row = {"run": _name(run), "gpu_uuid": gpu_uuid(run["doc"]["gpu"]), "engine": profile.engine,
                       "model": profile.model.name, "scenario": sc["scenario"]["name"], "source": kind,
                       "profile_of": label}
                for metric, sim_key, band_key, measured in (
                        ("energy", "energy_total_j", "energy_band_j", sc["energy_j"]),
                        ("time", "duration_s", "duration_band_s", sc["duration_s"])):
                    lo, hi = keys[band_key]
                    predicted = result.summary[sim_key]
                    row[metric] = {"predicted": predicted, "band": [lo, hi], "measured": measured,
                                   "error": predicted / measured - 1, "inside": bool(lo <= measured <= hi)}
                rows.append(row)
    return rows


def coverage(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Share inside the band and median |error|, by engine x source and overall, for energy and time."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        for key in ((row["engine"], row["source"]), ("all", row["source"]), ("all", "all")):
            groups.setdefault(key, []).append(row)
    out = []
    for (engine, source), group in groups.items():
        out.append({"engine": engine, "source": source, "n": len(group),
                    **{f"{m}_inside": sum(r[m]["inside"] for r in group) / len(group) for m in ("energy", "time")},
                    **{f"{m}_median_abs_error": statistics.median(abs(r[m]["error"]) for r in group)
                       for m in ("energy", "time")}})
    order = {"hf": 0, "tokenjoule": 1, "all": 2}
    return sorted(out, key=lambda c: (order.get(c["engine"], 1), c["source"]))


def _graph_profile(profile: GPUProfile) -> tuple[str, GPUProfile] | None:
    """The shipped CUDA-graph profile of the same GPU type and model: what the GPU alone takes per iteration."""
    for name, path in shipped_profiles().items():
        other = load_profile(path)
        if (other.mode == "cudagraph" and other.engine == "tokenjoule" and other.model.name == profile.model.name
                and other.gpu.get("name") == profile.gpu.get("name") and other.tp == profile.tp):
            return name, other
    return None


def host_split(run: dict[str, Any]) -> dict[str, Any] | None:
    """Per-iteration host time of an eager run's scenario decode steps, beside the CUDA-graph profile's GPU time.

    Host seconds per step = the measured `run_s` (launches and GPU, synchronized) minus the graph profile's time for
    the same shape (its GPU time with launches replayed from a graph). Only tokenjoule eager runs of a model with a
    shipped CUDA-graph profile of the GPU type; None otherwise (HF's iterations are whole-batch `generate()` calls).
    """
    profile = run["profile"]
    graph = _graph_profile(profile) if profile.engine == "tokenjoule" else None
    if graph is None:
        return None
    its = _scenario_decodes(run)
    if its.num_rows == 0:
        return None
    run_s = its.column("run_s").to_numpy()
    graph_s, eager_s = predicted_run_s(its, graph[1])[0], predicted_run_s(its, profile)[0]
    host_s = run_s - graph_s
    return {"run": _name(run), "gpu_uuid": gpu_uuid(run["doc"]["gpu"]), "host_cpu": run["doc"]["host"]["cpu_model"],
            "graph_profile": graph[0], "decode_steps": its.num_rows,
            "run_s_median": float(np.median(run_s)), "graph_s_median": float(np.median(graph_s)),
            "host_s_median": float(np.median(host_s)), "host_s_p10": float(np.percentile(host_s, 10)),
            "host_s_p90": float(np.percentile(host_s, 90)),
            "host_share_median": float(np.median(host_s / run_s)),
            "own_profile_s_median": float(np.median(eager_s)),
            "scenario_busy_power_w": _busy_power(run)}


def _scenario_decodes(run: dict[str, Any]) -> pa.Table:
    """The decode-only iterations of the run's scenarios (warm-ups left out)."""
    its = run["iterations"]
    names = pa.array([sc["scenario"]["name"] for sc in run["doc"]["scenarios"]])
    keep = pc.and_(pc.is_in(its.column("scenario"), value_set=names), pc.equal(its.column("prefill_seqs"), 0))
    return its.filter(pc.and_(keep, pc.greater(its.column("decode_seqs"), 0)))


def _busy_power(run: dict[str, Any]) -> float | None:
    """Median over scenarios of measured energy / summed iteration time (W).

    The GPU's power while it runs eager steps, its waits on the host between launches included.
    """
    powers = []
    for sc in run["doc"]["scenarios"]:
        busy = sum(scenario_rows(run["iterations"], sc["scenario"]["name"]).column("run_s").to_pylist())
        if busy > 0:
            powers.append(sc["energy_j"] / busy)
    return statistics.median(powers) if powers else None


def build_report(run_dirs: tuple[Path, ...] | None = None) -> dict[str, Any]:
    """Band coverage rows and summary, and the per-host split, for `run_dirs` (default: every launch-bound run)."""
    runs = [load_run(d) for d in (run_dirs or launch_bound_runs())]
    sims = Simulations()
    rows = band_rows(runs, sims)
    bands = {_name(r): with_band(r).host_band.to_dict() for r in runs}
    return {"kind": "tokenjoule-host-band-report", "target_inside": TARGET, "bands": bands, "rows": rows,
            "coverage": coverage(rows), "host_split": [s for r in runs if (s := host_split(r)) is not None]}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: how the band is made, its coverage, every row, and the per-host split."""
    target = report["target_inside"]
    lines = ["# Launch-bound engines across hosts: the host band and host time", "",
             "Generated by `tokenjoule validate hosts` from the committed runs under `validation/` (do not edit). "
             "Measured: each scenario's energy and duration (the GPU's counter and clock). Modeled: the simulated "
             "figures and their band.", "",
             "**The band.** A launch-bound profile (eager mode, HF `generate()`) carries the spread its own "
             "calibration saw: every window of a point measured more than once, over the median of that point's "
             "windows, pooled; "
             "p10 and p90 of those ratios (`host_band` in the profile). `simulate` moves the GPU's busy energy by the "
             "energy ratios and the duration by the time ratios times the replicas' utilization; idle energy is held. "
             f"Target: {target:.0%} of measured figures inside [p10, p90].", "",
             "## Each profile's band (ratios to the point median)", "",
             "| run | windows (points) | time p10 / p90 | energy p10 / p90 |", "|---|---|---|---|"]
    for run, b in report["bands"].items():
        lines.append(f"| `{run}` | {b['windows']} ({b['points']}) | {b['time_p10']:.3f} / {b['time_p90']:.3f} | "
                     f"{b['energy_p10']:.3f} / {b['energy_p90']:.3f} |")
    lines += ["", "## Coverage: measured figures inside the band", "",
              "Own host: each run simulated with its own calibration (a run replayed against a host check: with its "
              "GPU's own full calibration, where one was made). Other host: with each other GPU's (another UUID, "
              "another device lease) full calibration of the same GPU type, model, engine and mode. Host check: a "
              "run replayed against a shipped profile carried to its host by the host check (`--short-from`, "
              "seconds), with that carried profile; as is: the same runs with the shipped profile before the check.",
              "",
              "| engine | profile from | scenarios | energy inside | time inside | energy median abs error | "
              "time median abs error |", "|---|---|---|---|---|---|---|"]
    for c in report["coverage"]:
        met = lambda v: f"**{v:.0%}**" if v >= target else f"{v:.0%}"  # noqa: E731
        lines.append(f"| {c['engine']} | {c['source']} | {c['n']} | {met(c['energy_inside'])} | "
                     f"{met(c['time_inside'])} | {_pct(c['energy_median_abs_error'])} | "
                     f"{_pct(c['time_median_abs_error'])} |")
    lines += ["", f"Bold: the {target:.0%} target met.", "", "## Every scenario", "",
              "| run | scenario | profile of | energy pred / measured (J) | energy band (J) | in | "
              "time pred / measured (s) | time band (s) | in |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        e, t = r["energy"], r["time"]
        lines.append(f"| `{r['run']}` | {r['scenario']} | {r['profile_of']} | {e['predicted']:,.0f} / "
                     f"{e['measured']:,.0f} ({e['error']:+.1%}) | {e['band'][0]:,.0f}-{e['band'][1]:,.0f} | "
                     f"{'yes' if e['inside'] else 'no'} | {t['predicted']:,.1f} / {t['measured']:,.1f} "
                     f"({t['error']:+.1%}) | {t['band'][0]:,.1f}-{t['band'][1]:,.1f} | "
                     f"{'yes' if t['inside'] else 'no'} |")
    lines += ["", "## Host time apart from GPU time (tokenjoule eager decode steps)", "",
              "Per run, over its scenarios' decode-only iterations: `run_s` measured (launches and GPU, synchronized); "
              "graph s: the shipped CUDA-graph profile's time for the same shape (modeled: the GPU's own time, "
              "calibrated on another H200); host s = run_s - graph s. Busy power: the scenarios' measured energy over "
              "their summed iteration time (the GPU's draw while eager steps run, its waits on the host included). "
              "HF runs have no per-step times (one `generate()` call per batch), so they are not split.", "",
              "| run | GPU | decode steps | run_s median (ms) | graph s median (ms) | host s median (p10-p90) (ms) | "
              "host share | busy power (W) |", "|---|---|---|---|---|---|---|---|"]
    for h in report["host_split"]:
        lines.append(f"| `{h['run']}` | {h['gpu_uuid'][:12]} | {h['decode_steps']:,} | {h['run_s_median'] * 1e3:.1f} | "
                     f"{h['graph_s_median'] * 1e3:.1f} | {h['host_s_median'] * 1e3:.1f} "
                     f"({h['host_s_p10'] * 1e3:.1f}-{h['host_s_p90'] * 1e3:.1f}) | {h['host_share_median']:.0%} | "
                     f"{h['scenario_busy_power_w']:.0f} |")
    lines += _split_findings(report["host_split"])
    return "\n".join(lines) + "\n"


def _split_findings(split: list[dict[str, Any]]) -> list[str]:
    """What the split table says about host-to-host differences, in numbers from it."""
    if len(split) < 2:
        return []
    runs = [h["run_s_median"] for h in split]
    graphs = [h["graph_s_median"] for h in split]
    hosts = [h["host_s_median"] for h in split]
    spread_within = statistics.median(h["host_s_p90"] - h["host_s_p10"] for h in split)
    return ["", f"Across these runs the median decode step ran {min(runs) * 1e3:.1f}-{max(runs) * 1e3:.1f} ms; the "
            f"GPU's own (graph) time for the same shapes spans {min(graphs) * 1e3:.1f}-{max(graphs) * 1e3:.1f} ms and "
            f"host time {min(hosts) * 1e3:.1f}-{max(hosts) * 1e3:.1f} ms, so "
            f"{(max(hosts) - min(hosts)) / (max(runs) - min(runs)):.0%} of the run-to-run range of the median step is "
            f"host time (graph time is modeled, from one calibration). Within one run the host time's p10-p90 spans "
            f"a median {spread_within * 1e3:.1f} ms, as wide as the range between runs: a host term fitted on a "
            "calibration would carry that calibration's phase, so no such profile term is fitted here (the data "
            "cannot tell a host's speed from the phase it was in)."]


def report_json(report: dict[str, Any]) -> str:
    """The report as the JSON text written beside the Markdown."""
    return json.dumps(report, indent=1, sort_keys=True, default=str) + "\n"


def write_report(run_dirs: tuple[Path, ...] | None, md_path: Path) -> dict[str, Any]:
    """Build the report and write its Markdown and JSON (same name, .json); returns the report as read back."""
    report = json.loads(report_json(build_report(run_dirs)))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(md_path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(report_json(report)))
    write_atomic(md_path, lambda tmp: Path(tmp).write_text(render_markdown(report)))
    return report
