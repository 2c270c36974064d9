"""Tensor parallelism: the modeled TP cost (a tp=1 profile stretched by ModeledTPCost) against measured TP profiles.

Reads a tp=1 profile and one or more TP profiles (`torchrun ... -m tokenjoule.calibrate.tp_run calibrate`), each
with its raw sweep beside it (`raw_path`). For every grid point of each TP raw file, with the measured per-iteration
latency and energy as the median over repeats (as the fitter takes them), it reports the modeled cost and the TP
profile's own fit. Per TP degree: the median and p95 relative error of the modeled cost (and of the fit, for scale).

Paper check (Fernandez et al., ACL 2025, tensor parallelism of Llama-3.1-8B as quoted in issue 7: TP2 and TP4 cut
latency by 40% and 61% and raise energy by 29% and 55%), at batch 1: decode of one sequence and prefill of one prompt
at a few lengths. Measured change = measured TPk / measured TP1 - 1 (the raw points); modeled change = modeled TPk /
fitted TP1 - 1 (what the simulator assumes). The paper's figures are per request; ours are per iteration.

Command: `tokenjoule validate tp --tp1 PROFILE [--tp PROFILE ...] --out docs/tp.md [--json docs/tp.json]`.
Without --tp, the TP profiles of the same setup beside --tp1 and among the shipped ones are used.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from tokenjoule.calibrate.cost_form import IterFeatures, ProfileError
from tokenjoule.calibrate.profile import GPUProfile, load_profile, resolve_profile_path
from tokenjoule.calibrate.sweep.iterations import read_rows, shape_from_row
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.sim.cost import AllReduce, CalibratedCost, ModeledTPCost
from tokenjoule.sim.tp_profiles import candidates, profiles_by_tp, same_setup
from tokenjoule.traces.files import write_atomic

PAPER = {2: {"latency": -0.40, "energy": 0.29}, 4: {"latency": -0.61, "energy": 0.55}}
B1_PER_KIND = 4  # batch-1 lengths shown per kind (spread over those measured)
FIT_KINDS = ("prefill", "decode", "mixed")


def load(name: str | Path) -> tuple[GPUProfile, Path]:
    """A profile (file or shipped name) and its path."""
    path = resolve_profile_path(name)
    return load_profile(path), path


def measured_points(profile: GPUProfile, path: Path) -> list[dict[str, Any]]:
    """Per grid point of the profile's raw sweep: its shape and median step time (s) and energy (J) over repeats."""
    if not profile.raw_path:
        raise ProfileError(f"{path}: the profile names no raw sweep file (raw_path)")
    raw = path.parent / profile.raw_path
    if not raw.exists():
        raise ProfileError(f"{path}: its raw sweep file {raw} is missing")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in read_rows(raw):
        if row["status"] == "ok" and row["kind"] in FIT_KINDS:
            groups[row["point_id"]].append(row)
    points = []
    for point_id, rows in sorted(groups.items()):
        energies = [r["energy_per_step_j"] for r in rows if r["energy_per_step_j"] is not None]
        points.append({"point_id": point_id, "kind": rows[0]["kind"], "shape": shape_from_row(rows[0]),
                       "repeats": len(rows), "time_s": statistics.median(r["step_time_s"] for r in rows),
                       "energy_j": statistics.median(energies) if energies else None})
    if not points:
        raise ProfileError(f"{raw}: no measured grid points")
    return points


def rel(value: float, reference: float | None) -> float | None:
    """(value - reference) / reference, or None without a (nonzero) reference."""
    return None if not reference else (value - reference) / reference


def compare_points(points: list[dict[str, Any]], modeled: ModeledTPCost, fit: CalibratedCost) -> list[dict]:
    """Per measured point: measured, modeled and fitted latency and energy, and the two models' relative errors."""
    out = []
    for p in points:
        f = IterFeatures.of_shape(p["shape"])
        (mt, me), (ft, fe) = modeled.iteration(f), fit.iteration(f)
        out.append({"point_id": p["point_id"], "kind": p["kind"], "new_tokens": p["shape"].new_tokens,
                    "repeats": p["repeats"], "measured_time_s": p["time_s"], "modeled_time_s": mt, "fit_time_s": ft,
                    "measured_energy_j": p["energy_j"], "modeled_energy_j": me, "fit_energy_j": fe,
                    "modeled_time_err": rel(mt, p["time_s"]), "modeled_energy_err": rel(me, p["energy_j"]),
                    "fit_time_err": rel(ft, p["time_s"]), "fit_energy_err": rel(fe, p["energy_j"])})
    return out


def error_stats(errors: list[float | None]) -> dict[str, float | int | None]:
    """Median and p95 of |relative error|, and the median signed error (bias), over the points that have one."""
    e = np.array([x for x in errors if x is not None], dtype=np.float64)
    if not len(e):
        return {"n": 0, "median_abs": None, "p95_abs": None, "median": None}
    return {"n": int(len(e)), "median_abs": float(np.median(np.abs(e))),
            "p95_abs": float(np.percentile(np.abs(e), 95)), "median": float(np.median(e))}


def _b1_kind(shape: IterationShape) -> tuple[str, int] | None:
    """("decode", context) or ("prefill", prompt length) for a batch-1 shape, else None."""
    if not shape.prefill and len(shape.decode) == 1:
        return "decode", shape.decode[0]
    if not shape.decode and len(shape.prefill) == 1 and shape.prefill[0][1] == 0:
        return "prefill", shape.prefill[0][0]
    return None


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def paper_check(tp1: GPUProfile, tp1_points: list[dict], measured: dict[int, list[dict]],
                allreduce: AllReduce) -> list[dict[str, Any]]:
    """Batch-1 latency and energy change TP1 -> TPk, measured (where a TPk sweep has the point) and modeled."""
    base = CalibratedCost(tp1)
    degrees = sorted(set(PAPER) | set(measured))
    by_shape = {k: {p["shape"]: p for p in pts} for k, pts in measured.items()}
    kinds: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for p in tp1_points:
        key = _b1_kind(p["shape"])
        if key is not None:
            kinds[key[0]].append((key[1], p))
    rows = []
    for kind in ("decode", "prefill"):
        for length, p in _spread(sorted(kinds[kind], key=lambda x: x[0]), B1_PER_KIND):
            f = IterFeatures.of_shape(p["shape"])
            t1, e1 = base.iteration(f)
            row: dict[str, Any] = {"kind": kind, "tokens": length, "point_id": p["point_id"],
                                   "tp1_measured_time_s": p["time_s"], "tp1_measured_energy_j": p["energy_j"],
                                   "tp": {}}
            for k in degrees:
                tk, ek = ModeledTPCost(base, k, allreduce).iteration(f)
                got = by_shape.get(k, {}).get(p["shape"])
                row["tp"][k] = {
                    "modeled": {"latency": rel(tk, t1), "energy": rel(ek, e1)},
                    "measured": None if got is None else {"latency": rel(got["time_s"], p["time_s"]),
                                                          "energy": rel(got["energy_j"], p["energy_j"])
                                                          if got["energy_j"] is not None else None},
                }
            rows.append(row)
    return rows


def build_report(tp1_name: str | Path, tp_names: list[str | Path], allreduce: AllReduce | None = None) -> dict:
    """Everything the report shows (JSON-ready apart from int keys); ValueError names a bad profile or raw file.

    `allreduce` is the modeled all-reduce (default: the simulator's `AllReduce()` assumption).
    """
    allreduce = allreduce or AllReduce()
    tp1, tp1_path = load(tp1_name)
    if tp1.tp != 1:
        raise ProfileError(f"{tp1_path}: --tp1 must be a tp=1 profile, not tp={tp1.tp}")
    tp1_points = measured_points(tp1, tp1_path)
    report: dict[str, Any] = {"paper": PAPER, "allreduce": {"bus_bytes_per_s": allreduce.bus_bytes_per_s,
                                                             "latency_s": allreduce.latency_s},
                              "tp1": _identity(tp1, tp1_path), "tps": []}
    measured: dict[int, list[dict]] = {}
    for name in tp_names:
        prof, path = load(name)
        if prof.tp < 2:
            raise ProfileError(f"{path}: --tp needs a profile measured at tp >= 2, not tp={prof.tp}")
        if not same_setup(prof, tp1):
            raise ProfileError(f"{path}: {prof.label} is not the setup of --tp1 ({tp1.label}); GPU, model, engine and "
                             "mode must match")
        if prof.tp in measured:
            raise ProfileError(f"{path}: a second tp={prof.tp} profile; give one per TP degree")
        measured[prof.tp] = measured_points(prof, path)
        points = compare_points(measured[prof.tp], ModeledTPCost(CalibratedCost(tp1), prof.tp, allreduce),
                                CalibratedCost(prof))
        errors = {name: error_stats([p[name] for p in points])
                  for name in ("modeled_time_err", "modeled_energy_err", "fit_time_err", "fit_energy_err")}
        report["tps"].append({"tp": prof.tp, **_identity(prof, path), "errors": errors, "points": points})
    report["tps"].sort(key=lambda t: t["tp"])
    report["paper_check"] = paper_check(tp1, tp1_points, measured, allreduce)
    return report


def _identity(profile: GPUProfile, path: Path) -> dict[str, Any]:
    return {"profile": str(path), "label": profile.label, "date": profile.date, "raw": profile.raw_path,
            "idle_power_w": profile.idle_power_w}


def find_tp_profiles(tp1_name: str | Path) -> list[Path]:
    """TP profiles of --tp1's setup beside it and among the shipped ones (the newest per TP degree)."""
    tp1, path = load(tp1_name)
    return [p for tp, (_, p) in profiles_by_tp(tp1, candidates(path)).items() if tp > 1]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}%"


def _abs_pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _stats(s: dict[str, Any], bias: bool) -> str:
    text = f"{_abs_pct(s['median_abs'])} / {_abs_pct(s['p95_abs'])}"
    return text + f" / {_pct(s['median'])}" if bias else text


def render(report: dict[str, Any]) -> str:
    """The Markdown page (docs/tp.md)."""
    ar = report["allreduce"]
    lines = ["# Tensor parallelism: modeled vs measured", "",
             "Generated by `tokenjoule validate tp`; every number is labelled *measured* (raw sweep "
             "points, median over repeats) or *modeled* (`ModeledTPCost`: the tp=1 profile's time divided by tp plus "
             f"two ring all-reduces per layer at {ar['bus_bytes_per_s'] / 1e9:.0f} GB/s bus bandwidth and "
             f"{ar['latency_s'] * 1e6:.0f} us each, energy above idle unchanged, idle power x tp). *Fit* is the "
             "measured TP profile's own curves.", "",
             f"- tp=1: `{report['tp1']['profile']}` ({report['tp1']['label']}, measured {report['tp1']['date']})"]
    lines += [f"- tp={t['tp']}: `{t['profile']}` ({t['label']}, measured {t['date']})" for t in report["tps"]]
    lines += ["", "## Modeled TP cost vs measured, all grid points", "",
              "Relative error (model - measured) / measured over every measured grid point: median and p95 of its "
              "magnitude, and the median signed error (bias).", "",
              "| tp | points | modeled latency median / p95 / bias | modeled energy median / p95 / bias | "
              "fit latency median / p95 | fit energy median / p95 |", "|---|---|---|---|---|---|"]
    for t in report["tps"]:
        e = t["errors"]
        lines.append(f"| {t['tp']} | {len(t['points'])} | {_stats(e['modeled_time_err'], True)} | "
                     f"{_stats(e['modeled_energy_err'], True)} | {_stats(e['fit_time_err'], False)} | "
                     f"{_stats(e['fit_energy_err'], False)} |")
    lines += _render_paper(report)
    lines += _render_points(report)
    return "\n".join(lines) + "\n"


def _render_paper(report: dict[str, Any]) -> list[str]:
    degrees = sorted({int(k) for row in report["paper_check"] for k in row["tp"]})
    lines = ["", "## Paper check at batch 1: change from TP1", "",
             "Paper (per request, Llama-3.1-8B): " + "; ".join(
                 f"TP{k} latency {_pct(v['latency'])}, energy {_pct(v['energy'])}" for k, v in PAPER.items())
             + ". Ours per iteration: *measured* = measured TPk / measured TP1 - 1; *modeled* = modeled TPk / fitted "
               "TP1 - 1.", ""]
    if not report["paper_check"]:
        return lines + ["No batch-1 points in the tp=1 raw sweep."]
    head = "| iteration | TP1 measured ms / J | " + " | ".join(
        f"TP{k} latency measured / modeled | TP{k} energy measured / modeled" for k in degrees) + " |"
    lines += [head, "|" + "---|" * (2 + 2 * len(degrees))]
    for row in report["paper_check"]:
        energy = row["tp1_measured_energy_j"]
        cells = [f"{row['kind']} b1 {'ctx' if row['kind'] == 'decode' else 'len'} {row['tokens']}",
                 f"{row['tp1_measured_time_s'] * 1e3:.2f} / {'-' if energy is None else f'{energy:.3f}'}"]
        for k in degrees:
            c = row["tp"][k]
            got = c["measured"] or {}
            cells += [f"{_pct(got.get('latency'))} / {_pct(c['modeled']['latency'])}",
                      f"{_pct(got.get('energy'))} / {_pct(c['modeled']['energy'])}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _render_points(report: dict[str, Any]) -> list[str]:
    lines = []
    for t in report["tps"]:
        lines += ["", f"## Every grid point at tp={t['tp']}", "", "<details><summary>table</summary>", "",
                  "| point | latency ms measured / modeled / fit | err modeled / fit | energy J measured / modeled / "
                  "fit | err modeled / fit |", "|---|---|---|---|---|"]
        for p in t["points"]:
            me = p["measured_energy_j"]
            lines.append(f"| {p['point_id']} | {p['measured_time_s'] * 1e3:.2f} / {p['modeled_time_s'] * 1e3:.2f} / "
                         f"{p['fit_time_s'] * 1e3:.2f} | {_pct(p['modeled_time_err'])} / {_pct(p['fit_time_err'])} "
                         f"| {'-' if me is None else f'{me:.3f}'} / {p['modeled_energy_j']:.3f} / "
                         f"{p['fit_energy_j']:.3f} | {_pct(p['modeled_energy_err'])} / {_pct(p['fit_energy_err'])} |")
        lines += ["", "</details>"]
    return lines


def write_tp_report(report: dict[str, Any], out: Path, json_path: Path | None = None) -> None:
    """Write the report as Markdown to `out` and, if given, as JSON to `json_path` (each atomically)."""
    text = render(report)
    write_atomic(out, lambda tmp: Path(tmp).write_text(text))
    if json_path is not None:
        doc = json.dumps(report, indent=1, default=str) + "\n"
        write_atomic(json_path, lambda tmp: Path(tmp).write_text(doc))
