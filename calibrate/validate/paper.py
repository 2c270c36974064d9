"""Reproduce Fernandez et al. (ACL 2025)'s checkable findings on H100 from shipped profiles; writes the report.

Inputs, all committed: the measured H100 Llama-3.1-8B profiles in calibrate/profiles/ (tokenjoule cudagraph, tokenjoule
eager, HF eager), their raw sweeps (`.raw.parquet`), and the measured HF `generate()` check. Every number the report
prints is labelled *measured* (read from raw sweep rows or the generate check) or *modeled* (fitted curves, the
paper's binned estimate, the FLOPs estimate, or a `tokenjoule.sim.run` replay). Deterministic and CPU-only (~10 s).

Command: `tokenjoule paper [--out docs/paper-reproduction.md] [--plots docs/paper] [--no-plots]`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tokenjoule.calibrate.cost_form import IterFeatures
from tokenjoule.calibrate.profile import GPUProfile, load_profile
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.sim.cost import RooflineCost
from tokenjoule.sim.project.projection import ProjectConfig, project
from tokenjoule.sim.project.theoretical import request_flops
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.binning import PAPER_INPUT_EDGES, PAPER_OUTPUT_EDGES, BinSpec
from tokenjoule.traces.files import write_atomic
from tokenjoule.traces.loaders import load_trace
from tokenjoule.traces.schema import Trace
from tokenjoule.traces.synth import gamma_arrivals

PROFILES = Path(__file__).resolve().parents[1] / "profiles"  # the shipped profiles (calibrate/profiles)
ENGINES = {"cg": "h100-llama-3.1-8b-tokenjoule-cudagraph", "eager": "h100-llama-3.1-8b-tokenjoule-eager",
           "hf": "h100-llama-3.1-8b-hf-eager"}
GENERATE_CHECK = PROFILES / "checks" / "h100-llama-3.1-8b-hf-generate-check.json"
# The same cudagraph calibration, measured on an earlier machine lease: how much do the numbers move between leases?
ARCHIVE = PROFILES / "archive" / "h100-llama-3.1-8b-tokenjoule-cudagraph-lease1.json"
# The paper's bins, extended by one input and two output edges so that no request of the traces here is excluded.
BINS = BinSpec(PAPER_INPUT_EDGES + (16384,), PAPER_OUTPUT_EDGES + (1024, 2048))
# A bursty synthetic trace (no BurstGPT file here): Gamma gaps with cv 3, lognormal lengths; see `bursty_synthetic`.
# Only its arrivals are bursty like BurstGPT's: its lengths (input mean ~965, output median ~198 tokens) are
# conversation-like, far from BurstGPT's (input mean 257, output median 7), so it is not named after BurstGPT.
BURSTY_NAME = "Bursty synthetic (not BurstGPT)"
BURSTGPT_LENGTHS = {"in_mean": 257, "out_median": 7}
BURST = {"n": 10_000, "rate_per_s": 2.0, "cv": 3.0, "in_median": 600, "in_sigma": 1.0, "out_median": 200,
         "out_sigma": 0.9, "in_max": 8192, "out_max": 1024, "seed": 2025}
# The paper's Azure traces (its Tables 1-2, mean input / output tokens); the bundled 2023 files differ.
PAPER_TRACES = {"Azure conv 2023": (1632, 106), "Azure code 2023": (2511, 23)}
# Why the generate() check is no measurement of a warm batch (README, docs/validation.md: H200 HF runs).
COLD_FIRST_BATCH = "2.2-3.7x"
RATE_SCALES = (0.25, 1.0, 4.0)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
OUTPUTS = (8, 16, 32, 64, 128, 256, 512)
# A repeat whose energy error bound (relative, from the meter's tick timing) exceeds this is dropped when the point
# has another repeat within it.
MAX_ERROR_BOUND = 0.3


# ---- inputs ------------------------------------------------------------------------------------------------------

def raw_points(name: str) -> list[dict[str, Any]]:
    """The raw sweep's points, repeats averaged: kind, shape, new_tokens, batch, step time (s), step energy (J).

    Repeats with an error bound above MAX_ERROR_BOUND are left out when the point has a repeat within it.
    """
    rows = pq.read_table(PROFILES / f"{name}.raw.parquet").to_pylist()
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r["kind"] != "idle":
            groups[r["point_id"]].append(r)
    out = []
    for pid, reps in sorted(groups.items()):
        reps = [x for x in reps if (x["error_bound"] or 0.0) <= MAX_ERROR_BOUND] or reps
        r = reps[0]
        prefill = tuple(tuple(c) for c in json.loads(r["prefill_json"] or "[]"))
        decode = tuple(json.loads(r["decode_json"] or "[]"))
        out.append({"id": pid, "kind": r["kind"], "shape": IterationShape(prefill=prefill, decode=decode),
                    "new_tokens": int(r["new_tokens"]), "batch": len(prefill) + len(decode),
                    "step_s": float(np.mean([x["step_time_s"] for x in reps])),
                    "energy_j": float(np.mean([x["energy_per_step_j"] for x in reps]))})
    return out


def bursty_synthetic() -> Trace:
    """A bursty synthetic trace: Gamma arrivals (high cv) and lognormal, clipped prompt/output lengths.

    Its arrivals are bursty as BurstGPT's are; its lengths are not BurstGPT's (see BURSTGPT_LENGTHS).
    """
    b, rng = BURST, np.random.default_rng(BURST["seed"])
    arrival = gamma_arrivals(b["n"], b["rate_per_s"], b["cv"], rng)
    arrival -= arrival[0]
    inp = np.clip(np.rint(rng.lognormal(np.log(b["in_median"]), b["in_sigma"], b["n"])), 1, b["in_max"])
    out = np.clip(np.rint(rng.lognormal(np.log(b["out_median"]), b["out_sigma"], b["n"])), 1, b["out_max"])
    return Trace.from_columns(arrival, inp.astype(np.int32), out.astype(np.int32), source="bursty synthetic")


def roofline(profile: GPUProfile) -> RooflineCost:
    """The paper's theoretical cost (FLOPs / peak x TDP, no idle) for the profile's model and GPU."""
    return RooflineCost(profile.model, profile.datasheet)


def theory_j(profile: GPUProfile, inp: np.ndarray, out: np.ndarray) -> float:
    """TDP x FLOPs / peak FLOP/s summed over requests (J)."""
    gpu = profile.datasheet
    return float(request_flops(profile.model, inp, out).sum()) * gpu.tdp_w / gpu.peak_flops


# ---- findings from raw sweep points (measured) -------------------------------------------------------------------

def prefill_knee(points: list[dict[str, Any]], linear_from_tokens: int = 1024) -> dict[str, Any]:
    """Prefill energy per step vs tokens (fresh prompts only): flat floor, linear fit above, and where they meet."""
    by_tokens: dict[int, list[float]] = defaultdict(list)
    for p in points:
        if p["kind"] == "prefill" and all(ctx == 0 for _, ctx in p["shape"].prefill):
            by_tokens[p["new_tokens"]].append(p["energy_j"])
    tokens = np.array(sorted(by_tokens))
    energy = np.array([float(np.median(by_tokens[t])) for t in tokens])
    big = tokens >= linear_from_tokens
    slope, icpt = np.polyfit(tokens[big], energy[big], 1)
    pred = icpt + slope * tokens[big]
    r2 = 1.0 - float(((energy[big] - pred) ** 2).sum() / ((energy[big] - energy[big].mean()) ** 2).sum())
    floor = float(energy[0])
    return {"tokens": tokens.tolist(), "energy_j": energy.tolist(), "slope_j_per_token": float(slope),
            "intercept_j": float(icpt), "r2": r2, "floor_j": floor, "knee_tokens": (floor - icpt) / slope,
            "growth_64_256": float(energy[tokens == 256][0] / energy[tokens == 64][0]),
            "linear_from_tokens": linear_from_tokens}


def decode_by_shape(points: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, float]]:
    """Decode-only points keyed by (batch, context tokens per sequence)."""
    return {(p["batch"], p["shape"].decode[0]): p for p in points if p["kind"] == "decode"}


def engine_gain(cg: list[dict], other: list[dict]) -> list[dict[str, float]]:
    """Per decode batch size: median over contexts of other / cudagraph step energy and step time (measured)."""
    a, b = decode_by_shape(cg), decode_by_shape(other)
    out = []
    for batch in sorted({k[0] for k in a}):
        keys = [k for k in a if k[0] == batch and k in b]
        out.append({"batch": batch, "contexts": len(keys),
                    "energy_ratio": float(np.median([b[k]["energy_j"] / a[k]["energy_j"] for k in keys])),
                    "time_ratio": float(np.median([b[k]["step_s"] / a[k]["step_s"] for k in keys]))})
    return out


def decode_per_token(points: list[dict], context_tokens: int = 512) -> dict[int, float]:
    """Measured decode energy per sequence-step (J per output token) at one context, by batch size."""
    return {b: p["energy_j"] / b for (b, c), p in sorted(decode_by_shape(points).items()) if c == context_tokens}


def flops_ratios(points: list[dict], profile: GPUProfile) -> dict[str, list[float]]:
    """Measured step energy over the FLOPs estimate of the same shape, for prefill and decode points."""
    roof = roofline(profile)
    out: dict[str, list[float]] = {"prefill": [], "decode": []}
    for p in points:
        if p["kind"] in out:
            out[p["kind"]].append(p["energy_j"] / roof.iteration(IterFeatures.of_shape(p["shape"]))[1])
    return out


# ---- modeled findings (fitted curves, estimates, replays) --------------------------------------------------------

def batch_curve(profile: GPUProfile, input_tokens: int = 1024, output_tokens: int = 128) -> dict[int, float]:
    """Modeled J per request of a static batch of each size (fitted curves, `static_batch_cost`)."""
    return {b: static_batch_cost(profile, b, input_tokens, output_tokens)["energy_j"] / b for b in BATCHES}


def decode_linearity(profile: GPUProfile, batch: int, input_tokens: int = 512) -> dict[str, float]:
    """Modeled static-batch energy vs output length: straight-line fit and its worst relative deviation."""
    e = np.array([static_batch_cost(profile, batch, input_tokens, n)["energy_j"] for n in OUTPUTS])
    x = np.array(OUTPUTS, np.float64)
    slope, icpt = np.polyfit(x, e, 1)
    return {"batch": batch, "j_per_output_step": float(slope), "max_dev": float(np.max(np.abs(icpt + slope * x - e)
                                                                                     / e))}


def trace_row(name: str, trace: Trace, profiles: dict[str, GPUProfile], hf_factor: float) -> dict[str, Any]:
    """Table 4 row: theoretical, HF offline, cudagraph offline and online energy of one trace (all modeled)."""
    inp, out = trace.column("input_tokens"), trace.column("output_tokens")
    cfg = ProjectConfig(bins=BINS, estimators=("paper",))
    offline = {k: project(trace, profiles[k], cfg).paper for k in ("hf", "cg")}
    online = run(SimConfig(policy="continuous"), trace, profiles["cg"]).summary
    theory = theory_j(profiles["cg"], inp, out)
    hf, cg = offline["hf"].energy_j, offline["cg"].energy_j
    return {"trace": name, "requests": len(trace), "duration_s": float(trace.column("arrival_s")[-1]),
            "mean_in": float(inp.mean()), "mean_out": float(out.mean()), "median_out": float(np.median(out)),
            "theory_j": theory, "hf_offline_j": hf,
            "hf_corrected_j": hf * hf_factor, "cg_offline_j": cg, "cg_online_j": online["energy_total_j"],
            "cg_online_busy_j": online["gpu_busy_j"], "online_util": online["utilization"],
            "excluded": offline["cg"].excluded + offline["cg"].unfit, "savings": 1.0 - cg / hf,
            "savings_corrected": 1.0 - cg / (hf * hf_factor)}


def lease_check(traces: tuple[tuple[str, Trace], ...], now: GPUProfile, earlier: GPUProfile) -> list[dict[str, Any]]:
    """Cudagraph offline energy of each trace from two calibrations on different leases (modeled)."""
    cfg = ProjectConfig(bins=BINS, estimators=("paper",))
    return [{"trace": name, "now_j": project(t, now, cfg).paper.energy_j,
             "earlier_j": project(t, earlier, cfg).paper.energy_j} for name, t in traces]


def rate_sweep(trace: Trace, profile: GPUProfile) -> list[dict[str, float]]:
    """Online continuous-batching J/request of `trace` at scaled arrival rates (modeled replays)."""
    out = []
    for scale in RATE_SCALES:
        s = run(SimConfig(policy="continuous", rate_scale=scale), trace, profile).summary
        out.append({"rate_scale": scale, "req_per_s": s["requests"] / s["duration_s"] if s["duration_s"] else 0.0,
                    "j_per_request": s["j_per_request"], "busy_j_per_request": s["gpu_busy_j"] / s["finished"],
                    "util": s["utilization"]})
    return out


def generate_check(profiles: dict[str, GPUProfile]) -> dict[str, float]:
    """The measured HF generate() run beside the profiles' predictions and the FLOPs estimate of the same run."""
    data = json.loads(GENERATE_CHECK.read_text())
    b, i, o = 4, 1024, 128
    pred = {k: static_batch_cost(p, b, i, o)["energy_j"] for k, p in profiles.items()}
    measured = float(data["hf_generate_b4_1024in_128out_j"])
    theory = theory_j(profiles["hf"], np.full(b, i), np.full(b, o))
    return {"batch": b, "input_tokens": i, "output_tokens": o, "measured_j": measured,
            "measured_s": float(data["hf_generate_b4_1024in_128out_s"]), "hf_pred_j": pred["hf"],
            "cg_pred_j": pred["cg"], "eager_pred_j": pred["eager"], "theory_j": theory,
            "hf_factor": measured / pred["hf"], "savings_vs_measured": 1.0 - pred["cg"] / measured}


def build_report() -> dict[str, Any]:
    """Every number of the report, computed from the shipped profiles, raw sweeps and bundled traces."""
    profiles = {k: load_profile(PROFILES / f"{v}.json") for k, v in ENGINES.items()}
    raw = {k: raw_points(v) for k, v in ENGINES.items()}
    gen = generate_check(profiles)
    archived = load_profile(ARCHIVE)
    conv = load_trace("azure-conv-2023")
    traces = (("Azure conv 2023", conv), ("Azure code 2023", load_trace("azure-code-2023")),
              (BURSTY_NAME, bursty_synthetic()))
    return {
        "profiles": {k: {"name": ENGINES[k], "label": p.label, "date": p.date, "idle_w": p.idle_power_w,
                         "kv_tokens": p.kv_capacity_tokens} for k, p in profiles.items()},
        "generate": gen,
        "table4": [trace_row(n, t, profiles, gen["hf_factor"]) for n, t in traces],
        "prefill": {k: prefill_knee(raw[k]) for k in ENGINES},
        "linearity": {k: [decode_linearity(profiles[k], b) for b in (1, 16, 64)] for k in ENGINES},
        "decode_step_by_ctx": {k: {f"{b}x{c}": p["energy_j"] for (b, c), p in decode_by_shape(raw[k]).items()
                                   if b in (1, 16)} for k in ENGINES},
        "batch": {k: batch_curve(profiles[k]) for k in ENGINES},
        "decode_per_token": {k: decode_per_token(raw[k]) for k in ENGINES},
        "gain": {"eager": engine_gain(raw["cg"], raw["eager"]), "hf": engine_gain(raw["cg"], raw["hf"])},
        "flops_points": {k: flops_ratios(raw[k], profiles[k]) for k in ENGINES},
        "rate_sweep": rate_sweep(conv, profiles["cg"]),
        "lease": {"date": archived.date, "rows": lease_check(traces, profiles["cg"], archived)},
    }


# ---- verdicts ----------------------------------------------------------------------------------------------------

def verdicts(r: dict[str, Any]) -> dict[str, str]:
    """Reproduced / not reproduced / not testable here, per finding, by the criteria the report states."""
    pre, cg_lin = r["prefill"]["cg"], r["linearity"]["cg"]
    b = r["batch"]["cg"]
    fall, plateau = b[1] / b[128], b[128] / b[256]
    gain = r["gain"]["eager"]
    small = np.mean([g["energy_ratio"] for g in gain if g["batch"] <= 4])
    large = np.mean([g["energy_ratio"] for g in gain if g["batch"] >= 256])
    cg_ratios = [row["cg_offline_j"] / row["theory_j"] for row in r["table4"]]
    online_more = all(row["cg_online_j"] > row["cg_offline_j"] for row in r["table4"])
    sweep = [s["j_per_request"] for s in r["rate_sweep"]]

    def mark(ok: bool) -> str:
        return "reproduced" if ok else "not reproduced"

    return {
        "prefill": mark(pre["growth_64_256"] < 2.0 and pre["r2"] >= 0.99 and 64 <= pre["knee_tokens"] <= 512),
        "decode_linear": mark(max(x["max_dev"] for x in cg_lin) <= 0.05),
        "batch": mark(10.0 <= fall <= 25.0 and plateau < 1.25),
        "cudagraph": mark(small > 1.2 and small > large),
        "compile": "not testable here",
        # C10: the paper compares online and offline at matched batch size; this compares arrival rates.
        "online": mark(online_more and sweep == sorted(sweep, reverse=True)) + " (a different comparison)",
        # C11: against the paper's 1.3-6x, which merges its PyTorch and vLLM bands; FLOPs from actual lengths.
        "flops": mark(all(1.3 <= x <= 6.0 for x in cg_ratios)) + " (merged band, other baseline)",
    }


# ---- rendering ---------------------------------------------------------------------------------------------------

def _j(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}" if abs(x) >= 1 else f"{x:.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


HF_CAVEAT = ("**HF caveat.** The HF profile's static-batch prediction for the measured `generate()` run (batch 4, "
             "1024 in / 128 out) is {pred} J against {meas} J measured ({err:+.0%}): the HF sweep timed forward "
             "passes, not `generate()`'s per-step overhead. Every HF number below that comes from the HF profile is "
             "therefore a **lower bound**, and a saving computed against it is a lower bound on the true saving. "
             "The columns marked *x{f:.2f}* scale HF by the measured/predicted ratio of that one run, and that run was "
             "the first `generate()` batch of its shape: a cold batch, of the kind that ran {cold} slower than the "
             "next batch of the same shape on H200 (README, docs/validation.md). The x{f:.2f} factor, and every "
             "number derived from it, rests on that one cold run and is **not supported as a measurement** of "
             "`generate()`'s warm overhead (a rough correction at best: the overhead share also varies with batch and "
             "lengths).")


def render_summary(r: dict[str, Any], v: dict[str, str]) -> list[str]:
    """The findings-at-a-glance table."""
    t4, pre, b, gen = r["table4"], r["prefill"]["cg"], r["batch"]["cg"], r["generate"]
    gain = {g["batch"]: g["energy_ratio"] for g in r["gain"]["eager"]}
    cg_ratio = [row["cg_offline_j"] / row["theory_j"] for row in t4]
    rows = [
        ("Prefill energy flat below ~128-256 tokens, then linear", v["prefill"],
         f"measured: 64 -> 256 tokens costs x{pre['growth_64_256']:.2f} energy (tokens x4); linear above 1024 "
         f"(R^2 {pre['r2']:.4f}); floor meets line at {pre['knee_tokens']:.0f} tokens"),
        ("Decode energy linear in output length", v["decode_linear"],
         f"modeled: static batch energy vs output 8-512 tokens within "
         f"{_pct(max(x['max_dev'] for x in r['linearity']['cg']))} of a line (cudagraph; HF: "
         f"{_pct(max(x['max_dev'] for x in r['linearity']['hf']))})"),
        ("Per-request energy falls ~10-25x from batch 1 to >=128, then plateaus", v["batch"],
         f"modeled (1024 in / 128 out): x{b[1] / b[128]:.1f} from batch 1 to 128, x{b[128] / b[256]:.2f} more to 256"),
        ("CUDA graphs help most at small batches", v["cudagraph"],
         f"measured decode steps: eager / cudagraph energy x{gain[1]:.2f} at batch 1, x{gain[512]:.2f} at 512"),
        ("torch.compile helps most at small batches", v["compile"], "no compiled engine was measured"),
        ("Online continuous batching vs offline batching (the paper compares them at matched batch size; this "
         "compares the offline estimate's full batches with online replays at the traces' arrival rates: online "
         "costs more at those rates, less so as load rises)", v["online"],
         "modeled: online / offline energy " + ", ".join(f"x{row['cg_online_j'] / row['cg_offline_j']:.2f}"
                                                        for row in t4) + " (conv, code, bursty synthetic)"),
        ("FLOPs-based estimates underestimate by 1.3-6x (that range merges the paper's PyTorch and vLLM bands; "
         "our FLOPs estimate uses each request's actual lengths, the paper's its bins' edge lengths)", v["flops"],
         "modeled, cudagraph offline (the vLLM-like engine): " + ", ".join(f"x{x:.2f}" for x in cg_ratio)
         + "; HF offline (the PyTorch-like engine, lower bound): "
         + ", ".join(f"x{row['hf_offline_j'] / row['theory_j']:.2f}" for row in t4)
         + f"; the one cold HF generate() run: x{gen['measured_j'] / gen['theory_j']:.0f}"),
    ]
    out = ["| finding (paper) | status | our numbers |", "|---|---|---|"]
    out += [f"| {a} | **{s}** | {n} |" for a, s, n in rows]
    return out


def render_traces(r: dict[str, Any]) -> list[str]:
    """What the traces are: the bundled Azure 2023 files are not the paper's traces, the synthetic one not BurstGPT."""
    rows = {row["trace"]: row for row in r["table4"]}
    cells = "; ".join(f"{name}: bundled {rows[name]['mean_in']:,.0f} / {rows[name]['mean_out']:,.0f}, the paper's "
                      f"{p_in:,} / {p_out:,}" for name, (p_in, p_out) in PAPER_TRACES.items() if name in rows)
    return ["**Traces.** The Azure conv / code 2023 traces here are the public AzurePublicDataset files bundled with "
            "tokenjoule, **not the paper's traces**: mean input / output tokens " + cells + " (the paper's Tables "
            f"1-2). The *{BURSTY_NAME}* trace is synthetic with bursty arrivals; its lengths are not BurstGPT's (see "
            "Assumptions). Trace-level rows below describe these traces, not the paper's workloads."]


def render_table4(r: dict[str, Any]) -> list[str]:
    """Table 4: energy over the FLOPs estimate, HF vs cudagraph, offline and online."""
    f = r["generate"]["hf_factor"]
    out = [f"| trace | requests | FLOPs estimate J | HF offline J (lower bound) | HF x{f:.2f} J (one cold run) "
           f"| cudagraph offline J | cudagraph online J | HF / FLOPs | HF x{f:.2f} / FLOPs | cudagraph offline / FLOPs "
           f"| cudagraph online / FLOPs | savings (vs HF lower bound) | savings (vs HF x{f:.2f}, one cold run) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in r["table4"]:
        th = row["theory_j"]
        out.append(f"| {row['trace']} | {row['requests']:,} | {_j(th)} | {_j(row['hf_offline_j'])} | "
                   f"{_j(row['hf_corrected_j'])} | {_j(row['cg_offline_j'])} | {_j(row['cg_online_j'])} | "
                   f"x{row['hf_offline_j'] / th:.2f} | x{row['hf_corrected_j'] / th:.2f} | "
                   f"x{row['cg_offline_j'] / th:.2f} | x{row['cg_online_j'] / th:.2f} | >= {_pct(row['savings'])} | "
                   f"{_pct(row['savings_corrected'])} |")
    return out


def render_details(r: dict[str, Any], v: dict[str, str]) -> list[str]:
    """One section per finding, with the numbers behind the verdict."""
    out: list[str] = []
    pre = r["prefill"]
    out += ["## 1. Prefill energy: flat, then linear", "",
            "*Measured*: raw prefill points of fresh prompts (no cached context), repeats averaged (a repeat whose "
            f"energy error bound exceeds {MAX_ERROR_BOUND:.0%} is dropped where the point has a tighter one; the same "
            "holds in every *measured* table below), median over the "
            "batch x length combinations with the same total tokens. A line is fitted to the points with >= 1024 "
            "tokens; the knee is where it meets the floor (the 64-token point). Criterion: 64 -> 256 tokens costs "
            "less than x2 energy, R^2 >= 0.99 above 1024, knee within 64-512 tokens.", "",
            "| engine | " + " | ".join(f"{t} tok" for t in pre["cg"]["tokens"])
            + " | J/token above knee | R^2 | knee |",
            "|---|" + "---:|" * (len(pre["cg"]["tokens"]) + 3)]
    for k, p in pre.items():
        out.append(f"| {k} | " + " | ".join(_j(e) for e in p["energy_j"])
                   + f" | {p['slope_j_per_token']:.4f} | {p['r2']:.4f} | {p['knee_tokens']:.0f} tok |")
    knees = [p["knee_tokens"] for p in pre.values()]
    out += ["", f"Status: **{v['prefill']}**. The floor is host launch and weight streaming; past the knee the matrix "
            f"units saturate at {min(p['slope_j_per_token'] for p in pre.values()):.3f}-"
            f"{max(p['slope_j_per_token'] for p in pre.values()):.3f} J per prompt token. Our knees "
            f"({min(knees):.0f}-{max(knees):.0f} tokens) sit at or a little above the paper's 128-256.", "",
            "![prefill](paper/prefill_energy.png)", ""]
    out += ["## 2. Decode energy vs output length", "",
            "*Modeled*: static-batch energy (`static_batch_cost`, 512-token prompts) for outputs of "
            f"{', '.join(map(str, OUTPUTS))} tokens, fitted by a line; worst relative deviation. Criterion "
            "(cudagraph): <= 5%.", "", "| engine | batch | J per output step (slope) | max deviation from a line |",
            "|---|---:|---:|---:|"]
    for k, rows in r["linearity"].items():
        out += [f"| {k} | {x['batch']} | {x['j_per_output_step']:.2f} | {_pct(x['max_dev'])} |" for x in rows]
    ctx = r["decode_step_by_ctx"]
    out += ["", "*Measured* decode step energy (J) as the context grows, the reason it is (nearly) linear:", "",
            "| engine | batch | ctx 128 | ctx 512 | ctx 2048 | ctx 8192 | ctx 16384 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for k, d in ctx.items():
        for b in (1, 16):
            out.append(f"| {k} | {b} | " + " | ".join(_j(d[f"{b}x{c}"]) for c in (128, 512, 2048, 8192, 16384)) + " |")
    out += ["", f"Status: **{v['decode_linear']}** for the tokenjoule engines. HF's step energy grows "
            "steeply with context at batch 16 (measured above), so its curve bends more at large batches.", ""]
    b = r["batch"]
    out += ["## 3. Per-request energy vs batch size", "",
            "*Modeled*: J per request of a static batch (1024 in / 128 out), prefill plus 127 decode steps. "
            "Criterion (cudagraph): batch 1 / batch 128 within 10-25x and less than x1.25 more from 128 to 256.", "",
            "| engine | " + " | ".join(f"b={x}" for x in BATCHES) + " | b1 / b128 | b128 / b256 |",
            "|---|" + "---:|" * (len(BATCHES) + 2)]
    for k, d in b.items():
        out.append(f"| {k} | " + " | ".join(_j(d[x]) for x in BATCHES) + f" | x{d[1] / d[128]:.1f} | "
                   f"x{d[128] / d[256]:.2f} |")
    dpt, gen = r["decode_per_token"], r["generate"]
    out += ["", "*Measured* decode energy per output token (ctx 512) from raw points: "
            + "; ".join(f"{k}: {_j(d[1])} J at b=1, {_j(d[128])} at b=128 (x{d[1] / d[128]:.0f}), {_j(d[512])} at "
                        f"b=512" for k, d in dpt.items())
            + ". The decode step alone falls more than the 10-25x; the prefill share (constant per request) keeps "
            f"the per-request fall within it. *Measured* HF `generate()` at batch 4: {_j(gen['measured_j'] / 4)} J "
            f"per request (HF profile predicts {_j(b['hf'][4])}, a lower bound).", "",
            f"Status: **{v['batch']}**.", "", "![batch](paper/batch_energy.png)", ""]
    out += ["## 4. CUDA graphs (and compilation) at small vs large batches", "",
            "*Measured*: decode points of the same shape (batch x context) in the eager and cudagraph sweeps of the "
            "tokenjoule engine, and in the HF sweep; median over contexts of the ratio to cudagraph. Criterion: the "
            "eager / cudagraph energy ratio at batch <= 4 exceeds 1.2 and exceeds the ratio at batch >= 256.", "",
            "| batch | contexts | eager / cudagraph energy | eager / cudagraph time | HF / cudagraph energy "
            "| HF / cudagraph time |", "|---:|---:|---:|---:|---:|---:|"]
    for e, h in zip(r["gain"]["eager"], r["gain"]["hf"], strict=True):
        out.append(f"| {e['batch']} | {e['contexts']} | x{e['energy_ratio']:.2f} | x{e['time_ratio']:.2f} | "
                   f"x{h['energy_ratio']:.2f} | x{h['time_ratio']:.2f} |")
    out += ["", f"Status: **{v['cudagraph']}** for CUDA graphs. Compilation (`torch.compile`): **{v['compile']}** "
            "(no compiled engine was calibrated).", "", "![graphs](paper/cudagraph_gain.png)", ""]
    return out + render_online_flops(r, v)


def render_online_flops(r: dict[str, Any], v: dict[str, str]) -> list[str]:
    """Sections 5 (online vs offline) and 6 (FLOPs underestimate)."""
    out = ["## 5. Online continuous batching vs offline batching", "",
           "**A different comparison from the paper's**: the paper compares online and offline serving at matched "
           "batch size; this compares the offline estimate's full batches with online replays at the traces' "
           "arrival rates (and scaled rates), whose running batch is set by the load. The status below judges "
           "this comparison, not the paper's matched-batch one.", "",
           "*Modeled*, cudagraph profile. Offline: the paper's binned estimate (full static batches, no idle). "
           "Online: `tokenjoule.sim.run` replay with continuous batching at the trace's own arrival times (one "
           "replica, 256 sequences, idle power charged between iterations). Criterion: online costs more than "
           "offline at the traces' rates, and online J/request falls as the rate rises.", "",
           "| trace | offline J/request | online J/request | online / offline | online busy share | online util. |",
           "|---|---:|---:|---:|---:|---:|"]
    for row in r["table4"]:
        n = row["requests"]
        out.append(f"| {row['trace']} | {_j(row['cg_offline_j'] / n)} | {_j(row['cg_online_j'] / n)} | "
                   f"x{row['cg_online_j'] / row['cg_offline_j']:.2f} | "
                   f"{_pct(row['cg_online_busy_j'] / row['cg_online_j'])} | {_pct(row['online_util'])} |")
    conv = r["table4"][0]
    out += ["", "Azure conv 2023 replayed online at scaled arrival rates (offline: "
            f"{_j(conv['cg_offline_j'] / conv['requests'])} J/request):", "",
            "| rate scale | served req/s | J/request | busy J/request | util. |", "|---:|---:|---:|---:|---:|"]
    out += [f"| x{s['rate_scale']:g} | {s['req_per_s']:.2f} | {_j(s['j_per_request'])} | "
            f"{_j(s['busy_j_per_request'])} | {_pct(s['util'])} |" for s in r["rate_sweep"]]
    last = r["rate_sweep"][-1]
    beats = last["j_per_request"] < conv["cg_offline_j"] / conv["requests"]
    out += ["", f"Status: **{v['online']}**. At the traces' arrival rates the running batch is smaller than the "
            "offline "
            "estimate's full batches (and idle power is paid), so online costs more. "
            + (f"At x{last['rate_scale']:g} the rate, continuous batching beats the offline estimate, whose ceiling "
               "bins pad every request to its bin's edges." if beats else
               f"Even at x{last['rate_scale']:g} the rate, online stays above the offline estimate."), ""]
    gen, fp = r["generate"], r["flops_points"]
    out += ["## 6. FLOPs-based estimates underestimate", "",
            "Trace level (*modeled*): see the Table 4 ratio columns. Criterion: cudagraph offline / FLOPs within "
            "1.3-6x on every trace. That range merges two bands of the paper: its vLLM (optimized) rows sit at the "
            "low end and its PyTorch (unoptimized) rows at the high end, so the optimized engine should be judged "
            "against the vLLM band alone, which this report does not state separately; the verdict is against the "
            "merged range. The baseline also differs: our FLOPs estimate uses each request's actual lengths, the "
            "paper's the FLOPs of its bins' edge lengths.", "",
            f"The one cold HF `generate()` run (first batch of its shape) took {_j(gen['measured_j'])} J; its FLOPs "
            "estimate is "
            f"{_j(gen['theory_j'])} J (x{gen['measured_j'] / gen['theory_j']:.0f}). Raw sweep points over the FLOPs "
            "estimate of the same iteration shape (min / median / max):", "",
            "| engine | prefill points | decode points |", "|---|---|---|"]
    for k, d in fp.items():
        cells = [f"x{min(x):.1f} / x{float(np.median(x)):.1f} / x{max(x):.0f}" for x in (d["prefill"], d["decode"])]
        out.append(f"| {k} | {cells[0]} | {cells[1]} |")
    over = [f"{name} {row['trace']} (x{row[key] / row['theory_j']:.1f})" for row in r["table4"]
            for key, name in (("hf_offline_j", "HF offline"), ("cg_online_j", "cudagraph online"))
            if row[key] / row["theory_j"] > 6.0]
    lo = min(min(d["prefill"]) for d in fp.values())
    above = all(row[k] > row["theory_j"] for row in r["table4"] for k in ("hf_offline_j", "cg_offline_j",
                                                                          "cg_online_j")) \
        and all(min(x) > 1.0 for d in fp.values() for x in d.values())
    out += ["", f"Status: **{v['flops']}** for the optimized engine offline ("
            + ("every engine is above the FLOPs estimate on every trace and raw point: the direction holds)."
               if above else "some trace or raw point is below the FLOPs estimate).")
            + " Large prefills come closest "
            f"(x{lo:.1f}); small decode batches are off by two orders of magnitude; beyond x6: "
            + (", ".join(over) or "none") + ".", ""]
    return out


def render(r: dict[str, Any]) -> str:
    """The whole Markdown report."""
    v, gen = verdicts(r), r["generate"]
    prof = "\n".join(f"- `{p['name']}.json` ({p['label']}, measured {p['date'][:16]} UTC, idle {p['idle_w']:.0f} W)"
                     for p in r["profiles"].values())
    burst, bursty = BURST, next(row for row in r["table4"] if row["trace"] == BURSTY_NAME)
    lines = [
        "# Reproducing Fernandez et al. (ACL 2025) on H100", "",
        "Generated by `tokenjoule paper` from the shipped profiles; do not edit by hand "
        "(`tests/calibrate/validate/test_paper_reproduction.py` fails when this file is out of date).", "",
        "Paper: J. Fernandez, C. Na, V. Tiwari, Y. Bisk, S. Luccioni, E. Strubell, \"Energy Considerations of Large "
        "Language Model Inference and Efficiency Optimizations\", ACL 2025. Model: Llama-3.1-8B (bf16, random "
        "weights), one NVIDIA H100 80GB HBM3 (700 W limit). Inputs (each with its raw sweep `.raw.parquet`):", "",
        prof, f"- `{GENERATE_CHECK.name}`: a measured HF `generate()` run (batch 4, 1024 in / 128 out): "
        f"{gen['measured_s']:.2f} s, {_j(gen['measured_j'])} J.", "",
        "Labels: *measured* = read from raw sweep rows or the generate check; *modeled* = from fitted curves, the "
        "paper's binned estimate, the FLOPs estimate, or a simulator replay built on those curves. Engines: "
        "**cg** = tokenjoule with CUDA graphs (our best engine), **eager** = tokenjoule without them, **hf** = "
        "Hugging Face transformers eager (the paper's unoptimized baseline).", "",
        HF_CAVEAT.format(pred=_j(gen["hf_pred_j"]), meas=_j(gen["measured_j"]),
                         err=gen["hf_pred_j"] / gen["measured_j"] - 1, f=gen["hf_factor"], cold=COLD_FIRST_BATCH), "",
        *render_traces(r), "",
        "## Findings at a glance", "", *render_summary(r, v), "",
        "## Table 4 on H100: energy over the FLOPs estimate, and savings", "",
        "All *modeled*, on the bundled traces (not the paper's; see Traces). *FLOPs estimate*: TDP x FLOPs / peak "
        "(700 W, 989.4 TFLOP/s dense bf16), the paper's theoretical baseline computed differently: from each "
        "request's actual input and output lengths, where the paper takes the FLOPs of its bins' edge lengths. "
        "*Offline*: the paper's binned estimate (ceiling bins, full static batches of the "
        "largest size that fits the KV cache, capped at 256; `tokenjoule project`'s `paper` estimator). *Online*: "
        "continuous batching replayed at the trace's arrival times (`tokenjoule.sim.run`, one replica, idle power "
        "included); it applies to the tokenjoule engine only: HF `generate()` has no continuous batching. Savings "
        "= 1 - cudagraph offline / HF offline.", "", *render_table4(r), "",
        f"Check resting on one cold first-batch run (not supported as measured): the HF `generate()` run took "
        f"{_j(gen['measured_j'])} J, as the first batch of its shape (cold `generate()` batches ran "
        f"{COLD_FIRST_BATCH} slower than the next one on H200); the cudagraph profile models the same batch at "
        f"{_j(gen['cg_pred_j'])} J: a saving of {_pct(gen['savings_vs_measured'])} against that cold run (the paper "
        "reports up to 73%). Savings are smallest on Azure code, whose requests are prefill-heavy "
        "(mean output 28 tokens): prefill is compute-bound on every engine, so engine optimizations matter least.",
        "", f"Lease-to-lease check (*modeled*): the cudagraph offline column recomputed from `archive/{ARCHIVE.name}` "
        f"(the same calibration measured on an earlier machine lease, {r['lease']['date'][:16]} UTC): "
        + "; ".join(f"{x['trace']} {_j(x['earlier_j'])} J ({x['earlier_j'] / x['now_j'] - 1:+.1%})"
                    for x in r["lease"]["rows"]) + ".",
        "", "![table4](paper/table4.png)", "", *render_details(r, v),
        "## Assumptions and limits", "",
        f"- {BURSTY_NAME} (no BurstGPT file here): {burst['n']:,} requests, Gamma inter-arrival "
        f"gaps with mean rate {burst['rate_per_s']:g} req/s and coefficient of variation {burst['cv']:g} "
        "(bursty: BurstGPT reports bursty, Gamma-like arrivals), prompt and output lengths lognormal with medians "
        f"{burst['in_median']} / {burst['out_median']} tokens and log-sd {burst['in_sigma']:g} / "
        f"{burst['out_sigma']:g}, clipped to 1-{burst['in_max']} / 1-{burst['out_max']} (long-tailed, "
        f"conversation-like), seed {burst['seed']}. Only its arrivals are BurstGPT-like: its lengths (input mean "
        f"{bursty['mean_in']:,.0f}, output median {bursty['median_out']:,.0f} tokens) are far from BurstGPT's (input "
        f"mean {BURSTGPT_LENGTHS['in_mean']}, output median {BURSTGPT_LENGTHS['out_median']}), so its rows say "
        "nothing about BurstGPT's workload.",
        "- Bins: the paper's (input 32-8192, output 8-512) extended by input 16384 and output 1024 and 2048, so "
        "no request of the three traces is excluded (each trace's Table 4 row covers all its requests).",
        "- HF numbers are lower bounds (see the caveat); the x-corrected columns assume the one measured "
        "generate() overhead ratio holds for every batch, which is rough.",
        "- Not testable here: `torch.compile` (not calibrated), other GPUs (A6000/A100 in the paper), tensor "
        "parallelism (only modeled here), speculative decoding and the paper's other decoding strategies.", "",
    ]
    return "\n".join(lines)


# ---- plots and files ---------------------------------------------------------------------------------------------

def plot_all(r: dict[str, Any], folder: Path) -> list[Path]:
    """Write the report's PNG plots (matplotlib Agg, no timestamps in the files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    colors = {"cg": "tab:green", "eager": "tab:orange", "hf": "tab:red"}
    written = []

    def save(fig, name: str) -> None:
        path = folder / name
        fig.tight_layout()
        write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None}))
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, p in r["prefill"].items():
        t = np.array(p["tokens"], np.float64)
        ax.plot(t, p["energy_j"], "o", color=colors[k], label=f"{k} (measured)")
        ax.plot(t, np.maximum(p["floor_j"], p["intercept_j"] + p["slope_j_per_token"] * t), "-", color=colors[k],
                alpha=0.5, label=f"{k}: floor / line, knee {p['knee_tokens']:.0f} tok")
    ax.axvspan(128, 256, color="grey", alpha=0.15, label="paper: knee ~128-256")
    ax.set(xscale="log", yscale="log", xlabel="prefill tokens in the iteration", ylabel="energy per iteration (J)",
           title="Prefill energy: flat, then linear (H100, Llama-3.1-8B)")
    ax.legend(fontsize=7)
    save(fig, "prefill_energy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, d in r["batch"].items():
        ax.plot(list(d), list(d.values()), "o-", color=colors[k],
                label=f"{k} (modeled{', lower bound' if k == 'hf' else ''})")
    gen = r["generate"]
    ax.plot([gen["batch"]], [gen["measured_j"] / gen["batch"]], "*", ms=14, color=colors["hf"],
            label="HF generate() (measured)")
    ax.set(xscale="log", yscale="log", xlabel="static batch size", ylabel="J per request (1024 in / 128 out)",
           title="Per-request energy vs batch size")
    ax.legend(fontsize=8)
    save(fig, "batch_energy.png")

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for k, label in (("eager", "tokenjoule eager / cudagraph"), ("hf", "HF eager / cudagraph")):
        g = r["gain"][k]
        ax.plot([x["batch"] for x in g], [x["energy_ratio"] for x in g], "o-", color=colors[k], label=label)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xscale="log", xlabel="decode batch size", ylabel="decode step energy ratio (measured)",
           title="Decode energy relative to CUDA graphs")
    ax.legend(fontsize=8)
    save(fig, "cudagraph_gain.png")

    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    names = [row["trace"] for row in r["table4"]]
    series = (("hf_offline_j", "HF offline (lower bound)", colors["hf"]),
              ("cg_offline_j", "cudagraph offline", colors["cg"]), ("cg_online_j", "cudagraph online", "tab:blue"))
    x = np.arange(len(names))
    for i, (key, label, color) in enumerate(series):
        ax.bar(x + (i - 1) * 0.27, [row[key] / row["theory_j"] for row in r["table4"]], 0.27, color=color, label=label)
    ax.axhspan(1.3, 6.0, color="grey", alpha=0.15, label="paper: 1.3-6x (PyTorch and vLLM bands merged)",
               zorder=0)
    ax.set(xticks=x, xticklabels=names, ylabel="energy / FLOPs estimate (modeled)", title="Table 4 on H100")
    ax.legend(fontsize=8)
    save(fig, "table4.png")
    return written


def write_paper(out: Path, plots: Path | None) -> list[Path]:
    """Compute the report and write its Markdown to `out` and, unless `plots` is None, its PNG plots there.

    Args:
        out: the Markdown file (e.g. docs/paper-reproduction.md); its links name the plots as `paper/<name>.png`.
        plots: the folder for the plots (e.g. docs/paper), or None for none.

    Returns:
        The files written, the Markdown first.
    """
    report = build_report()
    text = render(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: Path(tmp).write_text(text))
    return [out] + ([] if plots is None else plot_all(report, plots))
