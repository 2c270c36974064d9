"""The validation report: every replayed scenario of every device run, simulated and compared with the GPU's figures.

Reads the raw files each device run wrote (`python3 -m tokenjoule.calibrate.validate.device`, or
`calibrate.validate.hf` for Hugging Face `generate()` runs), committed under `validation/<run>/`: the profile
calibrated in that same run, `requests.parquet`, `iterations.parquet`, `timeline.parquet` and `validation.json`. For
each scenario it rebuilds the exact request list (arrival times and lengths as replayed), simulates it with
`tokenjoule.sim.run.run` under the scenario's own policy, limits and KV capacity, and writes `docs/validation.json`,
`docs/validation.md` and a plot of simulated vs measured power (`docs/validation_power.png`).

Besides the primary comparison (each run's own profile), it reports diagnostics that change nothing in the simulator:
repeatability (scenarios measured in two runs on the same GPU), carry-over (each run simulated with another
calibration of the same GPU type: a sibling run's profile, else the shipped profile refitted), and the cost model
applied to the iterations the engine actually ran (by kind, by decode batch size, by mixed chunk size).

Command: `tokenjoule validate report RUN_DIR... [--out docs/validation.md]`. Modules beside it: `diagnostics`
(figures from one run's files), `render` and `findings` (text), `host_phases` (the host-contention checks).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.fit_sweep import aggregate_points
from tokenjoule.calibrate.profile import GPUProfile, load_profile, shipped_profiles
from tokenjoule.calibrate.recalibrate import SHORT_POINTS, short_recalibration
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.sweep.iterations import read_rows
from tokenjoule.calibrate.validate.diagnostics import (
    batch_warmth,
    calibration_temperature,
    gpu_uuid,
    idle_gap_power,
    iteration_bins,
    iteration_check,
    pair_facts,
    protocol,
    ragged_points,
    rel_error,
    repeatability,
    repeatability_summary,
    short_recal_base,
    short_recal_facts,
    small_decode_steps,
    stall_counts,
)
from tokenjoule.calibrate.validate.host_phases import host_phase_checks
from tokenjoule.calibrate.validate.render import plot_power, render_markdown
from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.run import SimConfig, SimResult
from tokenjoule.sim.run import run as run_simulation
from tokenjoule.sim.tp_profiles import same_setup
from tokenjoule.traces.files import write_atomic
from tokenjoule.traces.schema import Trace

ROOT = Path(__file__).resolve().parents[2]  # the package root: in a checkout, the repository
VALIDATION = ROOT / "validation"  # the repository's committed runs (absent from an installed package)
CHECKS = Path(__file__).resolve().parents[1] / "profiles" / "checks"  # the committed host-contention checks
QUICK_GRID = json.loads(json.dumps(dataclasses.asdict(GridConfig.quick())))  # as a profile's method.grid
METRICS = ("energy_total_j", "j_per_request", "duration_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "e2e_p50_s")
TARGETS = {"energy_total_j": ("median", 0.05, "max", 0.10), "tpot_p50_s": ("max", 0.05, None, None),
           "ttft_p50_s": ("max", 0.10, None, None), "e2e_p50_s": ("max", 0.05, None, None)}
PLOT = ("h200_2026-12-02_run1", "conv_chunked_x3")  # (run, scenario); falls back to the first run that has it


def default_runs() -> tuple[Path, ...]:
    """Every folder under validation/ that holds a validation.json, sorted (a new run needs no code change)."""
    return tuple(sorted(p.parent for p in VALIDATION.glob("*/validation.json")))


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
    """The SimConfig that mirrors a replayed scenario's engine settings.

    An offline scenario (`static_batch` > 0) released its requests one batch at a time, each once the engine was
    empty, whatever policy ran inside the batch; that gating is the static policy's. Online ones use their policy.
    """
    s = scenario["scenario"]
    if s["static_batch"] or s["policy"] == "static":
        return SimConfig(policy="static", max_batch=s["static_batch"] or s["max_num_seqs"], batch_timeout_s=0.0)
    return SimConfig(policy=s["policy"], max_num_seqs=s["max_num_seqs"], max_num_batched_tokens=s["max_batched_tokens"])


def scenario_trace(name: str, rows: pa.Table) -> Trace:
    """The replayed requests as a Trace (arrival order)."""
    table = pa.table({"request_id": rows.column("request_id").cast(pa.int64()),
                      "arrival_s": rows.column("arrival_s").cast(pa.float64()),
                      "input_tokens": rows.column("input_tokens").cast(pa.int32()),
                      "output_tokens": rows.column("output_tokens").cast(pa.int32())})
    order = np.argsort(table.column("arrival_s").to_numpy(), kind="stable")
    return Trace(table.take(pa.array(order)), name)


def scenario_rows(table: pa.Table, name: str) -> pa.Table:
    """The rows of one scenario of a run's requests or iterations table."""
    return table.filter(pc.equal(table.column("scenario"), name))


def simulate(scenario: dict[str, Any], rows: pa.Table, profile: GPUProfile, block_size: int,
             idle_power_w: float | None = None) -> tuple[dict[str, Any], SimResult]:
    """Simulate one scenario (optionally with another idle power); returns (metrics dict, SimResult)."""
    config = dataclasses.replace(sim_config(scenario), block_size=block_size, idle_power_w=idle_power_w)
    result = run_simulation(config, scenario_trace(scenario["scenario"]["name"], rows), profile)
    t, summary = result.requests, result.summary
    sim = {k: summary[k] for k in ("energy_total_j", "duration_s", "j_per_request", "gpu_idle_j", "utilization")}
    arrival, ttft, e2e, tpot = (t.column(c).to_numpy() for c in ("arrival_s", "ttft_s", "e2e_s", "tpot_s"))
    sim.update({"ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99), "tpot_p50_s": _pct(tpot, 50),
                "e2e_p50_s": _pct(e2e, 50), "finished": int(np.isfinite(arrival + e2e).sum())})
    return sim, result


class Simulations:
    """Simulated scenarios, cached per (run, scenario, profile content, idle override): each runs once."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str, str, float | None], tuple[dict[str, Any], SimResult]] = {}

    def get(self, run: dict[str, Any], scenario: dict[str, Any], profile: GPUProfile,
            idle_power_w: float | None = None) -> tuple[dict[str, Any], SimResult]:
        """The (metrics, SimResult) of `scenario` of `run` under `profile`."""
        name = scenario["scenario"]["name"]
        key = (run["name"], name, profile.content_sha256, idle_power_w)
        if key not in self._done:
            self._done[key] = simulate(scenario, scenario_rows(run["requests"], name), profile,
                                       run["doc"]["kv_block_tokens"],
                                       idle_power_w)
        return self._done[key]


def load_run(run_dir: Path) -> dict[str, Any]:
    """The raw files of one device run."""
    doc = json.loads((run_dir / "validation.json").read_text())
    profile = load_profile(run_dir / doc["profile"])
    return {"name": run_dir.name, "dir": run_dir, "doc": doc, "profile": profile,
            "raw": read_rows(run_dir / profile.raw_path) if profile.raw_path else [],  # the profile's sweep
            "requests": pq.read_table(run_dir / "requests.parquet"),
            "iterations": pq.read_table(run_dir / "iterations.parquet"),
            "timeline": pq.read_table(run_dir / "timeline.parquet")}


def _scenario_iterations(run: dict[str, Any]) -> pa.Table:
    """The iterations of the run's scenarios (warm-up replays left out)."""
    names = pa.array([s["scenario"]["name"] for s in run["doc"]["scenarios"]])
    its = run["iterations"]
    return its.filter(pc.is_in(its.column("scenario"), value_set=names))


def scenario_entry(run: dict[str, Any], sc: dict[str, Any], sims: Simulations) -> dict[str, Any]:
    """One scenario of one run: measured, simulated with the run's own profile, errors, iteration diagnostics."""
    name, profile = sc["scenario"]["name"], run["profile"]
    rows, its = scenario_rows(run["requests"], name), scenario_rows(run["iterations"], name)
    measured = measured_metrics(sc, rows)
    sim, _ = sims.get(run, sc, profile)
    check = iteration_check(its, profile, sc["duration_s"])
    check["energy_error"] = rel_error(check["pred_energy_j"], measured["energy_total_j"])
    return {"run": run["name"], "scenario": name, "spec": sc["scenario"], "n_requests": sc["n_requests"],
            "measured": measured, "simulated": sim, "error": {m: rel_error(sim[m], measured[m]) for m in METRICS},
            "iteration_check": check,
            "idle_gaps": idle_gap_power(its, run["timeline"], sc["clock_start_s"], sc["duration_s"]),
            "batch_warmth": batch_warmth(its, int(sc["scenario"].get("static_batches") or 0)),
            "carry_over": {}}


def run_header(run: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What a run was (machine, software, calibration protocol and fit errors) and how its scenarios came out."""
    doc, profile = run["doc"], run["profile"]
    return {"run": run["name"], "date": doc["date"], "gpu": doc["gpu"]["name"], "gpu_uuid": gpu_uuid(doc["gpu"]),
            "driver": doc["gpu"]["driver"], "power_limit_w": doc["gpu"].get("power_limit_w"),
            "host_cpu": doc["host"]["cpu_model"], "torch": doc["software"].get("torch"), "model": doc["model"],
            "engine": profile.engine, "mode": profile.mode, "profile": doc["profile"],
            "idle_power_w": profile.idle_power_w, "idle_power_end_w": doc.get("idle_power_end_w"),
            "kv_capacity_tokens": doc["kv_capacity_tokens"], "fit_errors": profile.fit_errors,
            "protocol": protocol(profile, run["raw"]),
            "calibration_temperature_median_c": calibration_temperature(doc, run["timeline"]),
            "summary": summarize([e["error"] for e in entries]),
            "stalls": stall_counts(run["iterations"], profile, [e["scenario"] for e in entries]),
            "iteration_bins": iteration_bins(_scenario_iterations(run), profile),
            "profile_reused": bool(doc.get("profile_reused")),
            "prices_ragged_decodes": "decode_tail_ctx_tokens" in profile.latency.coef,
            "host_overhead_method": profile.host_overhead.method if profile.host_overhead else None,
            "ragged_points": ragged_points(profile, run["raw"]),
            "short_recal": short_recal_facts(profile, run["raw"]), "profile_sha256": profile.content_sha256,
            "small_decode_steps": small_decode_steps(run["raw"], run["iterations"]),
            "scenario_warmup": doc.get("scenario_warmup")}


def is_check_run(run: dict[str, Any]) -> bool:
    """A run calibrated on a smoke grid (`--quick`): its profile is a check, not a calibration to judge or lend.

    Such a run (e.g. the stall check after the engine fix) is judged by the other runs' profiles (carry-over); its
    own profile is not used for other runs, and its own-profile errors stay out of the all-runs summary.
    """
    grid = run["profile"].method.get("grid") or {}
    return bool(grid) and all(QUICK_GRID.get(k) == v for k, v in grid.items() if k in QUICK_GRID) \
        and all(k in grid for k in ("target_s", "repeats"))  # grids gained fields since; compare those it holds


def _same_setup(a: GPUProfile, b: GPUProfile) -> bool:
    return same_setup(a, b) and a.tp == b.tp


def _shipped_for(profile: GPUProfile) -> list[tuple[str, GPUProfile]]:
    """Shipped profiles of the same GPU type and setup, but another calibration (refitted with today's fitter)."""
    from tokenjoule.calibrate.refit import refit_profile

    out = []
    for path in shipped_profiles().values():
        try:
            shipped = load_profile(path)
        except ProfileError:
            continue
        if _same_setup(shipped, profile) and shipped.date != profile.date:
            out.append((f"shipped {path.name} (refitted)", refit_profile(path)))
    return out


def calibration_pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str, GPUProfile, dict | None]]:
    """(run, source label, other profile, other run or None) for the carry-over.

    Sources are sibling runs (same GPU type and setup, not check runs) whose profile is another calibration than
    the run's own, the newest one per GPU (UUID); without any, the shipped profiles of the setup.
    """
    pairs = []
    for run in runs:
        own = run["profile"].content_sha256
        siblings = [o for o in runs if o is not run and not is_check_run(o) and o["profile"].content_sha256 != own
                    and _same_setup(o["profile"], run["profile"])]
        newest: dict[str | None, dict[str, Any]] = {}
        for o in sorted(siblings, key=lambda o: (o["profile"].date, not o["doc"].get("profile_reused"))):
            newest[gpu_uuid(o["doc"]["gpu"]) or o["name"]] = o
        chosen = sorted(newest.values(), key=lambda o: o["name"])
        if chosen:
            pairs += [(run, f"run {o['name']}", o["profile"], o) for o in chosen]
        elif not siblings:
            pairs += [(run, label, prof, None) for label, prof in _shipped_for(run["profile"])]
        base = short_recal_base(run["profile"])
        if base is not None:
            pairs.append((run, f"shipped {base[0].name} (the base of its short re-calibration)", base[1], None))
    return pairs


def source_raw(other: GPUProfile, other_run: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The raw sweep behind a carry-over source: its run's, or the shipped profile's of that date and setup."""
    if other_run is not None:
        return other_run["raw"]
    for path in shipped_profiles().values():
        try:
            shipped = load_profile(path)
        except ProfileError:
            continue
        if shipped.date == other.date and _same_setup(shipped, other) and shipped.raw_path:
            return read_rows(path.parent / shipped.raw_path)
    return []


def short_recalibrated(other: GPUProfile, run: dict[str, Any],
                       other_raw: Sequence[dict[str, Any]] = ()) -> GPUProfile | None:
    """`other` carried to the run's machine by a short re-calibration from the run's own measurements there.

    The few points are taken from the run's full sweep (SHORT_POINTS, median over repeats), with its idle power and
    host overhead: what `short_recalibration` would make of a short sweep on that machine, against `other_raw`
    (the source's own sweep; its curves where empty). None when the run's sweep lacks those points.
    """
    if other.method.get("short_recalibration_of"):  # `calibrate` refuses to carry a carried one
        return None
    kinds = ("prefill", "decode", "mixed")
    points = [p for p in aggregate_points(run["raw"], kinds) if p["point_id"] in SHORT_POINTS]
    if len(points) < 3:
        return None
    return short_recalibration(other, points, run["profile"].idle_power_w, run["profile"].host_overhead,
                               f"{len(points)} points of {run['name']}'s sweep", aggregate_points(other_raw, kinds))


def carry_over(runs: list[dict[str, Any]], entries: list[dict[str, Any]], sims: Simulations) -> list[dict[str, Any]]:
    """Each run simulated with another calibration of its GPU type, as is and after a short re-calibration."""
    out = []
    for run, label, other, other_run in calibration_pairs(runs):
        other = dataclasses.replace(other, kv_capacity_tokens=run["doc"]["kv_capacity_tokens"])
        recal = short_recalibrated(other, run, source_raw(other, other_run))
        mine = [e for e in entries if e["run"] == run["name"]]
        for sc, entry in zip(run["doc"]["scenarios"], mine, strict=True):
            as_is, _ = sims.get(run, sc, other)
            entry["carry_over"][label] = {"error": {m: rel_error(as_is[m], entry["measured"][m]) for m in METRICS}}
            if recal is not None:
                short, _ = sims.get(run, sc, recal)
                entry["carry_over"][label]["error_short_recal"] = {
                    m: rel_error(short[m], entry["measured"][m]) for m in METRICS}
        out.append({"run": run["name"], "source": label, "source_run": other_run["name"] if other_run else None,
                    "source_idle_power_w": other.idle_power_w, "run_idle_power_w": run["profile"].idle_power_w,
                    "facts": pair_facts(run, other, other_run),
                    "summary": summarize([e["carry_over"][label]["error"] for e in mine]),
                    "summary_short_recal": summarize([e["carry_over"][label]["error_short_recal"] for e in mine])
                    if recal is not None else None,
                    "short_recal_notes": recal.notes.rsplit("; short re-calibration ", 1)[-1] if recal else None})
    return out


def repeat_pairs(runs: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scenarios measured in two runs on the same GPU (same UUID and setup): the measurement's own noise floor."""
    out = []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            uuids = [gpu_uuid(r["doc"]["gpu"]) for r in (a, b)]
            if uuids[0] is None or uuids[0] != uuids[1] or not _same_setup(a["profile"], b["profile"]):
                continue
            rows = repeatability([e for e in entries if e["run"] == a["name"]],
                                 [e for e in entries if e["run"] == b["name"]], a["requests"], b["requests"])
            if not rows:  # e.g. a run replaying other scenarios against the same calibration
                continue
            out.append({"run_a": a["name"], "run_b": b["name"], "facts": pair_facts(a, b["profile"], b),
                        "scenarios": rows, "summary": repeatability_summary(rows)})
    return out


def summarize(errors: list[dict[str, float | None]]) -> dict[str, Any]:
    """Median and max |relative error| per metric over scenarios, and whether each target holds."""
    out: dict[str, Any] = {}
    for m in METRICS:
        errs = [abs(e[m]) for e in errors if e[m] is not None]
        if not errs:
            continue
        out[m] = {"median_abs": statistics.median(errs), "max_abs": max(errs), "n": len(errs)}
        if m in TARGETS:
            kind, bound, kind2, bound2 = TARGETS[m]
            ok = out[m][f"{kind}_abs"] <= bound and (kind2 is None or out[m][f"{kind2}_abs"] <= bound2)
            out[m]["target"] = f"{kind} <= {bound:.0%}" + (f", {kind2} <= {bound2:.0%}" if kind2 else "")
            out[m]["met"] = bool(ok)
    return out


def plot_choice(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run, scenario) of the power plot: PLOT if present, else the first run holding PLOT's scenario, else any."""
    def find(run: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((s for s in run["doc"]["scenarios"] if s["scenario"]["name"] == name), None)

    ordered = sorted(runs, key=lambda r: r["name"] != PLOT[0])
    for run in ordered:
        if (sc := find(run, PLOT[1])) is not None:
            return run, sc
    return next((r, r["doc"]["scenarios"][0]) for r in ordered if r["doc"]["scenarios"])


def build_report(run_dirs: tuple[Path, ...] | None = None, sims: Simulations | None = None) -> dict[str, Any]:
    """Every scenario of every run: measured, simulated, errors, diagnostics; summaries per run and overall."""
    sims = sims or Simulations()
    runs = [load_run(d) for d in (run_dirs or default_runs())]
    headers, entries = [], []
    for run in runs:
        mine = [scenario_entry(run, sc, sims) for sc in run["doc"]["scenarios"]]
        headers.append(run_header(run, mine))
        entries += mine
    plot_run, plot_sc = plot_choice(runs)
    return {"kind": "tokenjoule-validation-report", "runs": headers, "scenarios": entries,
            "summary": summarize([e["error"] for e, run in zip(entries, _run_of(runs, entries), strict=True)
                                  if not is_check_run(run)]),
            "check_runs": [r["name"] for r in runs if is_check_run(r)], "targets": TARGETS, "metrics": list(METRICS),
            "carry_over": carry_over(runs, entries, sims), "repeatability": repeat_pairs(runs, entries),
            "plot": {"run": plot_run["name"], "scenario": plot_sc["scenario"]["name"]},
            "host_phases": host_phase_checks(CHECKS)}


def _run_of(runs: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name = {r["name"]: r for r in runs}
    return [by_name[e["run"]] for e in entries]


def report_json(report: dict[str, Any]) -> str:
    """The report as the JSON text written to docs/validation.json."""
    return json.dumps(report, indent=1, sort_keys=True, default=str) + "\n"


RUN_KIND = "tokenjoule-validation-run"


def is_run_folder(path: Path) -> bool:
    """Whether `path` holds a device run's validation.json (not, say, a report's JSON of the same name)."""
    try:
        doc = json.loads((path / "validation.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("kind") == RUN_KIND


def run_folders(paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """The run folders named by `paths`: each a run folder (holding a run's validation.json) or a folder of them.

    Raises:
        ConfigError: a path that is neither a run folder nor holds any.
    """
    out: list[Path] = []
    for path in paths:
        if is_run_folder(path):
            out.append(path)
            continue
        inner = sorted(p.parent for p in path.glob("*/validation.json") if is_run_folder(p.parent))
        if not inner:
            raise ConfigError(f"{path}: no run's validation.json in it or in its folders; give the folders a device "
                              "run wrote (`tokenjoule validate run` or `tokenjoule validate hf`)")
        out += inner
    return tuple(out)


def output_paths(md_path: Path) -> dict[str, Path]:
    """Where the report's three files go: the Markdown, the JSON beside it, and the power plot beside it."""
    return {"md": md_path, "json": md_path.with_suffix(".json"),
            "png": md_path.with_name(f"{md_path.stem}_power.png")}


def write_report(run_dirs: tuple[Path, ...], md_path: Path) -> dict[str, Any]:
    """Build the report of `run_dirs` and write its Markdown, JSON and power plot (`output_paths(md_path)`).

    Args:
        run_dirs: device run folders, each holding validation.json and the raw files it names.
        md_path: the Markdown file to write (e.g. docs/validation.md); the JSON and the plot go beside it.

    Returns:
        The report, as read back from its JSON text (what the Markdown was rendered from).
    """
    paths = output_paths(md_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    sims = Simulations()
    report = json.loads(report_json(build_report(run_dirs, sims)))  # rendered from what the file holds
    write_atomic(paths["json"], lambda tmp: Path(tmp).write_text(report_json(report)))
    text = render_markdown(report, paths["png"].name)
    write_atomic(paths["md"], lambda tmp: Path(tmp).write_text(text))
    plot_run = load_run(next(d for d in run_dirs if d.name == report["plot"]["run"]))
    plot_power(plot_run, report["plot"]["scenario"], sims, paths["png"])
    return report
