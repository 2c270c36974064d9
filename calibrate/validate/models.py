"""Leave-one-model-out validation of composed profiles: one GPU calibration, many models, each priced unseen.

A device lease (`tests/bench/device_models_lease.sh`) measures the GPU's operators (`tokenjoule calibrate-gpu`) and,
for each model, a quick whole-iteration grid and about a minute of replays (`tokenjoule validate run --quick
--scenario-set models`), all on one GPU. Here, on a CPU, for each model M:

1. the GPU profile is built from the operator sweep, and its overhead terms are fitted on the *other* models'
   measured iterations only (their quick grids, and the ragged decode iterations of their warm-up replays);
2. M's profile is composed from it (`calibrate/compose.py`): nothing measured of M is used;
3. each of M's replayed scenarios is simulated with that profile and compared with what the GPU measured: energy,
   TTFT p50, TPOT p50; and M's own quick-grid iterations are priced as an iteration-level check.

Command: `tokenjoule validate models LEASE_DIR --ops OPS_DIR [--out docs/validation_models.md]`; the JSON and a
per-model plot go beside the Markdown.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.compose_check import (
    compare_points,
    measured_points,
    ragged_decode_points,
    replay_iterations,
)
from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.gpu_profile import GPUOperatorProfile, build_gpu_profile
from tokenjoule.calibrate.overhead_fit import fit_overheads
from tokenjoule.calibrate.validate.diagnostics import rel_error
from tokenjoule.calibrate.validate.report import Simulations, load_run, measured_metrics, scenario_rows
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.traces.files import write_atomic

METRICS = ("energy_total_j", "ttft_p50_s", "tpot_p50_s")
# Issue 16's targets on the H200 with CUDA graphs: energy median |error| and max, TPOT and TTFT p50 median.
TARGETS = {"energy_median": 0.03, "energy_max": 0.06, "tpot_p50_median": 0.05, "ttft_p50_median": 0.05}


def model_runs(lease_dir: Path | Sequence[Path]) -> list[Path]:
    """The leases' model folders (each holds a validation.json), sorted by model name; a model twice is refused."""
    dirs = [lease_dir] if isinstance(lease_dir, Path) else list(lease_dir)
    runs: dict[str, Path] = {}
    for d in dirs:
        found = sorted(p.parent for p in d.glob("*/validation.json"))
        if not found:
            raise ProfileError(f"{d}: no model folder with a validation.json")
        for run in found:
            if run.name in runs:
                raise ProfileError(f"{run}: model {run.name} is also in {runs[run.name]}; pass one lease per model")
            runs[run.name] = run
    return [runs[name] for name in sorted(runs)]


def gpu_profile_of(ops_dir: Path, mode: str) -> GPUOperatorProfile:
    """The GPU profile of the lease's operator sweep (operator fits only; overheads come per fold)."""
    gpu = build_gpu_profile([ops_dir / "operators.raw.parquet"], ops_dir / "operators.meta.json", ops_dir)
    return dataclasses.replace(gpu, mode=mode)


def replayed_spec(doc: dict[str, Any]) -> ModelSpec:
    """The model as the engine replayed it, its context at least the scenarios' longest request.

    Random weights serve any length the scenarios hold (up to their `max_total_tokens`), even past the model's own
    context (OLMoE's 4,096), so the simulation must not reject those.
    """
    spec = ModelSpec.from_name(doc["model"])
    longest = max(int(s.get("max_total_tokens") or 0) for s in doc["scenarios"])
    return dataclasses.replace(spec, max_position_embeddings=max(spec.max_position_embeddings, longest))


def measured_iterations(folder: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """A model folder's measured whole iterations, read once.

    Returns its quick grid's points (`points`), the ragged decode iterations of its warm-up replays (`ragged`), every
    iteration of those warm-up replays (`replays`: their eager iterations and serving-loop host seconds), and the two
    files' names (`files`). The validation scenarios' iterations are never read here.
    """
    raw = doc["profile"].replace(".json", ".raw.parquet")
    return {"points": measured_points(folder / raw),
            "ragged": ragged_decode_points(folder / "iterations.parquet"),
            "replays": replay_iterations(folder / "iterations.parquet"), "files": [raw, "iterations.parquet"]}


def fit_on(gpu: GPUOperatorProfile, runs: list[dict[str, Any]], prefix: str = "") -> GPUOperatorProfile:
    """`gpu` with its overheads fitted on the given runs' measured iterations.

    Each run needs `dir`, `spec` and `measured_iterations`' keys; `fitted_on` names their files, each under `prefix`
    (or the run's own `prefix`) and the folder's name.
    """
    data = [(r["spec"], r["points"]) for r in runs]
    ragged = [(r["spec"], r["ragged"]) for r in runs]
    replays = [(r["spec"], r["replays"]) for r in runs]
    files = [f"{r.get('prefix', prefix)}{r['dir'].name}/{f}" for r in runs for f in r["files"]]
    return dataclasses.replace(gpu, overheads=fit_overheads(gpu, data, files, ragged=ragged, replays=replays))


def fold(gpu: GPUOperatorProfile, held_out: str, runs: dict[str, dict[str, Any]]) -> GPUOperatorProfile:
    """`gpu` with overheads fitted on every model's measured iterations except `held_out`'s."""
    return fit_on(gpu, [run for name, run in runs.items() if name != held_out])


def model_entry(name: str, gpu: GPUOperatorProfile, runs: dict[str, dict[str, Any]],
                sims: Simulations) -> dict[str, Any]:
    """One held-out model: its composed profile's errors on its replays and on its own measured iterations."""
    run = runs[name]
    folded = fold(gpu, name, runs)
    profile = compose_profile(folded, run["spec"], source=f"{gpu.label} (overheads without {name})")
    scenarios = []
    for sc in run["doc"]["scenarios"]:
        measured = measured_metrics(sc, scenario_rows(run["requests"], sc["scenario"]["name"]))
        simulated, _ = sims.get(run, sc, profile)
        scenarios.append({"scenario": sc["scenario"]["name"], "n_requests": sc["n_requests"],
                          "measured": {m: measured[m] for m in METRICS},
                          "simulated": {m: simulated[m] for m in METRICS},
                          "error": {m: rel_error(simulated[m], measured[m]) for m in METRICS},
                          "energy_window": energy_window(sc, run["doc"].get("meter", {}).get("update_period_s"))})
    return {"model": name, "moe": run["spec"].is_moe, "overheads": folded.overheads.to_dict(),
            "iterations": compare_points(profile, run["points"]), "scenarios": scenarios,
            "summary": summarize([s["error"] for s in scenarios])}


def energy_window(scenario: dict[str, Any], period_s: float | None) -> dict[str, Any]:
    """How the scenario's energy was measured, and its timing uncertainty relative to the energy.

    Edge-aligned (`calibrate/measure/edges.py`): its bound over the energy. A plain counter difference (runs before
    edge alignment): one counter period at the scenario's mean power over its energy, i.e. period / duration, the
    most each edge can gain or miss (None without a known period).
    """
    if scenario.get("energy_aligned"):
        return {"aligned": True, "per_edge": None,
                "bound": scenario["energy_bound_j"] / scenario["energy_j"] if scenario.get("energy_j") else None}
    duration = scenario.get("duration_s") or 0.0
    return {"aligned": False, "per_edge": period_s / duration if period_s and duration > 0 else None, "bound": None}


def _window(w: dict[str, Any] | None) -> str:
    if not w:
        return "-"
    if w["aligned"]:
        return "edge-aligned" + (f", bound {w['bound']:.2%}" if w["bound"] is not None else "")
    return f"plain, up to {_pct(w['per_edge'])} per edge" if w["per_edge"] is not None else "plain"


def summarize(errors: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Median and max |error| of each metric over scenarios (None where no scenario has it)."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        values = np.abs([e[m] for e in errors if e[m] is not None])
        out[f"{m}_median"] = float(np.median(values)) if len(values) else None
        out[f"{m}_max"] = float(values.max()) if len(values) else None
    return out


def target_figures(pooled: dict[str, float | None]) -> dict[str, float | None]:
    """`summarize`'s figures that issue 16's targets (TARGETS) judge, under the targets' names."""
    return {"energy_median": pooled["energy_total_j_median"], "energy_max": pooled["energy_total_j_max"],
            "tpot_p50_median": pooled["tpot_p50_s_median"], "ttft_p50_median": pooled["ttft_p50_s_median"]}


def load_runs(lease_dir: Path | Sequence[Path], mode: str | None = None) -> dict[str, dict[str, Any]]:
    """Every model folder of the leases, by model: its run (`load_run`), measured iterations and replayed spec.

    With `mode`, a folder replayed in another engine mode is refused (ProfileError).
    """
    runs = {}
    for path in model_runs(lease_dir):
        run = load_run(path)
        if mode is not None and run["doc"]["runner_config"]["mode"] != mode:
            raise ProfileError(f"{path}: replayed in {run['doc']['runner_config']['mode']} mode, not {mode}")
        runs[path.name] = {**run, **measured_iterations(path, run["doc"]), "spec": replayed_spec(run["doc"])}
    return runs


def build_models_report(lease_dir: Path | Sequence[Path], ops_dir: Path, mode: str = "cudagraph") -> dict[str, Any]:
    """The leave-one-model-out report of one lease, or of several pooled (see the module docstring)."""
    gpu = gpu_profile_of(ops_dir, mode)
    runs = load_runs(lease_dir, mode)
    sims = Simulations()
    models = [model_entry(name, gpu, runs, sims) for name in runs]
    pooled = summarize([e for m in models for e in (s["error"] for s in m["scenarios"])])
    checks = target_figures(pooled)
    leases = [lease_dir] if isinstance(lease_dir, Path) else list(lease_dir)
    every = [(m["model"], sc, resolves_max(sc.get("energy_window"))) for m in models for sc in m["scenarios"]]
    kept = [sc["error"]["energy_total_j"] for _, sc, resolves in every if resolves]
    resolved = {"n": len(kept), "of": len(every),
                "energy_max": max((abs(e) for e in kept if e is not None), default=None),
                "left_out": [f"{name} {sc['scenario']}" for name, sc, resolves in every if not resolves]}
    return {"kind": "tokenjoule-models-validation", "lease": " + ".join(d.name for d in leases), "ops": ops_dir.name,
            "mode": mode,
            "gpu": gpu.gpu.get("name"), "host": gpu.host, "models": models, "pooled": pooled,
            "targets": {k: {"target": TARGETS[k], "value": v, "met": v is not None and v <= TARGETS[k]}
                        for k, v in checks.items()},
            "energy_max_resolved": resolved}


def resolves_max(window: dict[str, Any] | None) -> bool:
    """Whether a scenario's energy window can show an error of the energy-max target's size.

    Edge-aligned windows can (their bounds are under 1%); a plain counter difference only when one counter period at
    its mean power is under half the target (both edges together then stay under it).
    """
    if not window:
        return False
    error = window["bound"] if window["aligned"] else window["per_edge"]
    return error is not None and error < TARGETS["energy_max"] / 2


def _pct(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else f"{value:+.1%}" if signed else f"{value:.1%}"


def render_models_markdown(report: dict[str, Any], plot_name: str) -> str:
    """The report as Markdown: the per-model table, the pooled figures against the targets, every scenario."""
    lines = [f"# Leave-one-model-out validation: {report['gpu']}, {report['mode']}", "",
             "Generated by `tokenjoule validate models` from the measured files of device leases "
             f"(`{report['lease']}`, operator sweep `{report['ops']}`). Every simulated number here is MODELED: each "
             "model's profile is composed from the GPU's operator fits, with the overhead terms fitted on the *other* "
             "models' measured iterations only. Errors are (simulated - measured) / measured.", "",
             "| model | MoE | energy median / max | TTFT p50 median | TPOT p50 median | iterations: latency / energy "
             "median |", "|---|---|---|---|---|---|"]
    for m in report["models"]:
        s, it = m["summary"], m["iterations"]["all"]
        lines.append(f"| {m['model']} | {'yes' if m['moe'] else 'no'} | {_pct(s['energy_total_j_median'])} / "
                     f"{_pct(s['energy_total_j_max'])} | {_pct(s['ttft_p50_s_median'])} | "
                     f"{_pct(s['tpot_p50_s_median'])} | {_pct(it['latency_median'])} / "
                     f"{_pct(it['energy_median'])} |")
    lines += ["", "Pooled over every scenario of every model, against issue 16's targets:", "",
              "| figure | target | measured error | met |", "|---|---|---|---|"]
    for name, t in report["targets"].items():
        lines.append(f"| {name} | {t['target']:.0%} | {_pct(t['value'])} | {'yes' if t['met'] else 'no'} |")
    r = report.get("energy_max_resolved")
    if r and r["left_out"]:
        lines += ["", f"Energy max over the {r['n']} of {r['of']} scenarios whose energy window can show an error of "
                  f"the max target's size (edge-aligned, or a plain counter difference under "
                  f"{TARGETS['energy_max'] / 2:.0%} per edge): {_pct(r['energy_max'])}. Left out: "
                  f"{', '.join(r['left_out'])} (see the energy window column)."]
    lines += ["", f"![energy error per scenario and model]({plot_name})", "", "## Every scenario", "",
              "Energy window: edge-aligned (both edges on energy-counter steps, `calibrate/measure/edges.py`) with its "
              "timing bound, or a plain counter difference, which can gain or miss up to one counter period's energy "
              "at each edge (shown at the scenario's mean power).", "",
              "| model | scenario | requests | energy measured J | energy window | energy error | TTFT p50 error | "
              "TPOT p50 error |", "|---|---|---|---|---|---|---|---|"]
    for m in report["models"]:
        for s in m["scenarios"]:
            e = s["error"]
            lines.append(f"| {m['model']} | {s['scenario']} | {s['n_requests']} | "
                         f"{s['measured']['energy_total_j']:.0f} | {_window(s.get('energy_window'))} | "
                         f"{_pct(e['energy_total_j'], True)} | "
                         f"{_pct(e['ttft_p50_s'], True)} | {_pct(e['tpot_p50_s'], True)} |")
    return "\n".join(lines) + "\n"


def plot_models(report: dict[str, Any], path: Path) -> None:
    """Energy error of every scenario, grouped by model (one bar per scenario), with the +-3% target band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    names = [s["scenario"] for s in models[0]["scenarios"]]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [100 * next((s["error"]["energy_total_j"] or 0.0 for s in m["scenarios"] if s["scenario"] == name),
                             0.0) for m in models]
        ax.bar(np.arange(len(models)) + (i - (len(names) - 1) / 2) * width, values, width, label=name)
    ax.axhspan(-3, 3, color="green", alpha=0.1, label="target: within 3%")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(np.arange(len(models)), [m["model"] for m in models], rotation=20)
    ax.set_ylabel("simulated - measured energy (%)")
    ax.set_title(f"Composed profiles, each model held out ({report['gpu']}, {report['mode']}; modeled vs measured)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_models_report(lease_dir: Path | Sequence[Path], ops_dir: Path, md_path: Path,
                        mode: str = "cudagraph") -> dict[str, Any]:
    """Build the report and write its Markdown, its JSON beside it and its plot beside it (`*_energy.png`)."""
    report = json.loads(json.dumps(build_models_report(lease_dir, ops_dir, mode), default=float))
    md_path.parent.mkdir(parents=True, exist_ok=True)
    png = md_path.with_name(f"{md_path.stem}_energy.png")
    write_atomic(md_path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    write_atomic(md_path, lambda tmp: Path(tmp).write_text(render_models_markdown(report, png.name)))
    plot_models(report, png)
    return report
