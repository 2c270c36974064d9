"""Diagnostics for the validation report, each computed from one run's raw files (no simulation).

- `iteration_check`: the profile's cost model applied to the iterations the engine actually ran, by kind.
- `iteration_bins`: the same over a whole run, decode-only iterations binned by batch size and mixed ones by chunk.
- `stall_counts`: one-off stalls (an iteration many times slower than its shape predicts), warm-ups included, and how
  many came with a decode split count (a compile-time constant of the Triton kernel) new to that run.
- `batch_warmth`: offline scenarios' first batch against their later batches of the same shape.
- `idle_gap_power`, `calibration_temperature`: what the power timeline says about idle power and heat.
- `protocol`: how the run's profile was calibrated (grid points by kind, mixed fitted or not, repeat order).
- `pair_facts`: what two calibrations have in common (GPU UUID, driver, host CPU, time apart).
- `repeatability`: the measured run-to-run difference of each metric for scenarios replayed in two runs.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenjoule.calibrate.cost_form import FEATURES, ProfileError, tail_ctx_tokens
from tokenjoule.calibrate.measure.machine import gpu_uuids
from tokenjoule.calibrate.profile import GPUProfile, load_profile, shipped_profiles
from tokenjoule.calibrate.sweep.iterations import read_rows
from tokenjoule.kernels.shape import num_splits_for

DECODE_BATCH_BINS = ((1, 8), (8, 32), (32, 64), (64, 128), (128, 256), (256, 513))  # [lo, hi) sequences
MIXED_CHUNK_BINS = ((1, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 1 << 30))  # [lo, hi) prefill tokens
REPEAT_METRICS = ("energy_total_j", "duration_s", "ttft_p50_s", "tpot_p50_s", "e2e_p50_s")
# A stall: an iteration that ran more than STALL_RATIO times its predicted time and STALL_EXCESS_S longer. Such
# one-off costs (e.g. first use of a shape) are no property of the shape, so the checks also report errors without them.
STALL_RATIO = 4.0
STALL_EXCESS_S = 0.2


def rel_error(sim: float | None, measured: float | None) -> float | None:
    """(simulated - measured) / measured, or None when either is missing or measured is 0."""
    if sim is None or measured is None or not measured or not np.isfinite(sim) or not np.isfinite(measured):
        return None
    return (sim - measured) / measured


def predicted_run_s(its: pa.Table, profile: GPUProfile) -> tuple[np.ndarray, np.ndarray]:
    """Per iteration: the profile's predicted forward-pass seconds and joules (no host time)."""
    feats = {f: its.column(f).to_numpy().astype(np.float64) for f in FEATURES if f in its.column_names}
    if "decode_max_ctx_tokens" in its.column_names:  # recorded since the 2026-12-02 run3; older runs lack it
        feats["decode_tail_ctx_tokens"] = tail_ctx_tokens(
            its.column("decode_max_ctx_tokens").to_numpy(), its.column("decode_ctx_tokens").to_numpy(),
            its.column("decode_seqs").to_numpy(), profile.decode_split_rule)
    new = its.column("new_tokens").to_numpy().astype(np.float64)
    has_prefill = (feats["prefill_seqs"] > 0).astype(np.float64)
    return (profile.latency.evaluate(new, has_prefill=has_prefill, **feats),
            profile.energy.evaluate(new, has_prefill=has_prefill, **feats))


def _stalls(run_s: np.ndarray, pred_s: np.ndarray) -> np.ndarray:
    return (run_s > STALL_RATIO * pred_s) & (run_s - pred_s > STALL_EXCESS_S)


def _kinds(its: pa.Table) -> dict[str, np.ndarray]:
    decode = its.column("decode_seqs").to_numpy() > 0
    prefill = its.column("prefill_seqs").to_numpy() > 0
    return {"prefill": prefill & ~decode, "decode": decode & ~prefill, "mixed": prefill & decode}


def iteration_check(its: pa.Table, profile: GPUProfile, duration_s: float) -> dict[str, Any]:
    """The profile's cost model applied to the iterations the engine ran (no scheduling, no queueing).

    Also split by iteration kind (prefill-only, decode-only, mixed = prefill chunks beside decodes): measured and
    predicted GPU-run seconds, and host seconds per iteration outside `ModelRunner.run`.
    """
    t_pred, e_pred = predicted_run_s(its, profile)
    run_col = its.column("run_s").to_numpy()
    host_col = its.column("host_s").to_numpy()
    run_s, host_s, busy_pred = float(run_col.sum()), float(host_col.sum()), float(np.sum(t_pred))
    energy_pred = float(np.sum(e_pred)) + profile.idle_power_w * max(0.0, duration_s - busy_pred)
    stall = _stalls(run_col, t_pred)
    chunk = its.column("prefill_tokens").to_numpy()
    prefill_seqs = its.column("prefill_seqs").to_numpy()
    host_pred = None if profile.host_overhead is None else profile.host_overhead.seconds(
        its.column("decode_seqs").to_numpy() + prefill_seqs, prefill_seqs)
    kinds = {}
    for kind, m in _kinds(its).items():
        if m.any():
            k = m & ~stall
            kinds[kind] = {"n": int(m.sum()), "run_s": float(run_col[m].sum()), "pred_run_s": float(t_pred[m].sum()),
                           "run_time_error": rel_error(float(t_pred[m].sum()), float(run_col[m].sum())),
                           "stalls": int((m & stall).sum()), "prefill_tokens_median": float(np.median(chunk[m])),
                           "run_time_error_without_stalls": rel_error(float(t_pred[k].sum()), float(run_col[k].sum())),
                           "host_ms_per_iteration": float(host_col[m].mean() * 1e3),
                           "pred_host_ms_per_iteration": float(host_pred[m].mean() * 1e3) if host_pred is not None
                           else None}
    return {"iterations": int(its.num_rows), "run_s": run_s, "host_s": host_s, "pred_run_s": busy_pred,
            "pred_host_s": None if host_pred is None else float(host_pred.sum()),
            "run_time_error": rel_error(busy_pred, run_s), "host_share": host_s / duration_s,
            "stalls": int(stall.sum()), "stall_excess_s": float(np.sum((run_col - t_pred)[stall])),
            "pred_energy_j": energy_pred, "by_kind": kinds}


def _binned(values: np.ndarray, run_s: np.ndarray, pred_s: np.ndarray, bins: tuple[tuple[int, int], ...],
            ) -> list[dict[str, Any]]:
    stall = _stalls(run_s, pred_s)
    out = []
    for lo, hi in bins:
        m = (values >= lo) & (values < hi)
        if m.any():
            meas, pred = float(run_s[m].mean()), float(pred_s[m].mean())
            k = m & ~stall
            out.append({"lo": lo, "hi": hi, "n": int(m.sum()), "run_ms": meas * 1e3, "pred_run_ms": pred * 1e3,
                        "run_time_error": rel_error(pred, meas), "stalls": int((m & stall).sum()),
                        "run_time_error_without_stalls": rel_error(float(pred_s[k].sum()), float(run_s[k].sum()))})
    return out


def iteration_bins(its: pa.Table, profile: GPUProfile) -> dict[str, list[dict[str, Any]]]:
    """Over a run's scenario iterations: mean measured vs predicted run time per bin.

    Decode-only iterations are binned by batch size (sequences), mixed ones by prefill chunk size (new prefill
    tokens in the iteration); bins are [lo, hi).
    """
    t_pred, _ = predicted_run_s(its, profile)
    run_s = its.column("run_s").to_numpy()
    kinds = _kinds(its)
    dec, mix = kinds["decode"], kinds["mixed"]
    seqs = its.column("decode_seqs").to_numpy()
    chunk = its.column("prefill_tokens").to_numpy()
    return {"decode_by_batch": _binned(seqs[dec], run_s[dec], t_pred[dec], DECODE_BATCH_BINS),
            "mixed_by_chunk": _binned(chunk[mix], run_s[mix], t_pred[mix], MIXED_CHUNK_BINS)}


def stall_counts(its: pa.Table, profile: GPUProfile, scenarios: list[str]) -> dict[str, Any]:
    """Stalls among a run's iterations: in its warm-up replays, and in its scenarios (with their excess seconds)."""
    t_pred, _ = predicted_run_s(its, profile)
    run_s = its.column("run_s").to_numpy()
    stall = _stalls(run_s, t_pred)
    names = set(scenarios)
    in_scenarios = np.array([n in names for n in its.column("scenario").to_pylist()], dtype=bool)
    return {"warmups": int((stall & ~in_scenarios).sum()), "scenarios": int((stall & in_scenarios).sum()),
            "scenario_excess_s": float(np.sum((run_s - t_pred)[stall & in_scenarios])),
            "with_new_split_count": _new_split_counts(its, profile, stall)}


def _new_split_counts(its: pa.Table, profile: GPUProfile, stall: np.ndarray) -> int | None:
    """Stalls of eager iterations with decodes whose split count no earlier such iteration of the run used.

    Only tokenjoule engines run the Triton decode kernel; CUDA-graph decode steps were captured before serving, so
    the iterations that could compile a new kernel variant are the mixed ones (and every one in eager mode).
    """
    if profile.engine != "tokenjoule":
        return None
    eager = _kinds(its)["mixed"] | (its.column("decode_seqs").to_numpy() > 0) & (profile.mode == "eager")
    seen, count = set(), 0
    for i, n in enumerate(its.column("decode_seqs").to_pylist()):
        if not eager[i]:
            continue
        splits = num_splits_for(n, profile.model.n_kv_heads)
        count += int(stall[i] and splits not in seen)
        seen.add(splits)
    return count


def batch_warmth(its: pa.Table, static_batches: int) -> dict[str, Any] | None:
    """Mean decode-step time of an offline scenario's first batch and of its later batches (same shape each).

    A batch starts at its prefill iteration. None when the scenario ran fewer than two batches.
    """
    starts = np.flatnonzero(its.column("prefill_seqs").to_numpy() > 0)
    if static_batches < 2 or len(starts) < 2:
        return None
    run_s = its.column("run_s").to_numpy()
    decode = its.column("decode_seqs").to_numpy() > 0
    bounds = [*starts, len(run_s)]
    means = [float(run_s[a:b][decode[a:b]].mean()) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return {"batches": len(means), "first_step_s": means[0], "later_step_s": float(np.mean(means[1:])),
            "first_over_later": means[0] / float(np.mean(means[1:]))}


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


def calibration_temperature(doc: dict[str, Any], timeline: pa.Table) -> float | None:
    """Median GPU temperature while the sweep ran (timeline samples before the first warm-up or scenario)."""
    starts = [s["clock_start_s"] for s in doc.get("warmups", []) + doc["scenarios"]]
    if not starts:
        return None
    t = timeline.column("time_s").to_numpy()
    temp = timeline.column("temperature_c").to_numpy()[t < min(starts)]
    return float(np.median(temp)) if len(temp) else None


def _repeat_order(rows: list[dict[str, Any]]) -> str:
    """'back-to-back' when every point's repeats ran consecutively, 'interleaved' otherwise (from the row times)."""
    rows = sorted((r for r in rows if r["kind"] != "idle" and r.get("unix_time_s") is not None),
                  key=lambda r: r["unix_time_s"])
    repeats = Counter(r["point_id"] for r in rows)
    if not rows or max(repeats.values()) < 2:
        return "single"
    adjacent = sum(a["point_id"] == b["point_id"] for a, b in zip(rows, rows[1:], strict=False))
    return "back-to-back" if adjacent == sum(n - 1 for n in repeats.values()) else "interleaved"


def short_recal_base(profile: GPUProfile) -> tuple[Path, GPUProfile] | None:
    """(path, profile) of the shipped profile a short re-calibration was made from (matched by content)."""
    want = (profile.method.get("short_recalibration_of") or {}).get("content_sha256")
    for path in shipped_profiles().values() if want else ():
        try:
            shipped = load_profile(path)
        except ProfileError:
            continue
        if shipped.content_sha256 == want:
            return path, shipped
    return None


def _measured_points(raw: list[dict[str, Any]]) -> dict[str, str]:
    """point_id -> kind of every point a sweep measured (ok rows, idle left out)."""
    return {r["point_id"]: r["kind"] for r in raw if r["status"] == "ok" and r["kind"] != "idle"}


def _mixed_fit(profile: GPUProfile, measured: dict[str, str]) -> str:
    """Whether the profile's curves fitted mixed points: "fitted", "held out (scored, not fitted)", "not measured".

    A short re-calibration answers for the shipped profile it re-scaled.
    """
    base = short_recal_base(profile)
    if base is not None:
        path, shipped = base
        return _mixed_fit(shipped, _measured_points(read_rows(path.parent / (shipped.raw_path or ""))))
    if "mixed" not in measured.values():
        return "not measured"
    # the fitter that held mixed points out fitted only the other kinds
    fitted = profile.fit_errors.get("latency", {}).get("n_points") == len(measured)
    return "fitted" if fitted else "held out (scored, not fitted)"


def protocol(profile: GPUProfile, raw: list[dict[str, Any]]) -> dict[str, Any]:
    """How the profile was calibrated: its grid's points by kind (from its raw rows), mixed fitted, repeats."""
    grid = profile.method.get("grid", {})
    measured = _measured_points(raw)
    lat = profile.fit_errors.get("latency", {})
    main = grid.get("repeats") or 0
    extra = {r["point_id"] for r in raw if r["status"] == "ok" and r["kind"] != "idle" and r["repeat"] >= main}
    return {"points_by_kind": dict(sorted(Counter(measured.values()).items())), "fitted_points": lat.get("n_points"),
            "mixed": _mixed_fit(profile, measured), "repeats": grid.get("repeats"),
            "extra_repeats": grid.get("extra_repeats", 0), "noisy_spread": grid.get("noisy_spread"),
            "extra_points": len(extra),
            "repeat_order": _repeat_order([r for r in raw if r["status"] == "ok"]), "target_s": grid.get("target_s"),
            "time_method": profile.method.get("time")}


def ragged_points(profile: GPUProfile, raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweep's ragged decode points (a few long contexts among short ones), measured and predicted.

    Each: the measured step time, the profile's prediction, and the same prediction without the longest context's
    tail term (what uniform points alone give).
    """
    if not raw or "decode_tail_ctx_tokens" not in profile.latency.coef:
        return []
    from tokenjoule.calibrate.fit_sweep import aggregate_points

    blind = dataclasses.replace(profile.latency, coef={**profile.latency.coef, "decode_tail_ctx_tokens": 0.0})
    points = aggregate_points(raw, ("decode",))
    rule = profile.decode_split_rule
    return [{"point_id": p["point_id"], "measured_ms": p["time_s"] * 1e3,
             "pred_ms": profile.latency.of_shape(p["shape"], rule) * 1e3,
             "pred_without_tail_ms": blind.of_shape(p["shape"], rule) * 1e3}
            for p in points if p["shape"].ragged_decode]


SMALL_DECODE_SEQS = 16  # decode-only steps this narrow are launch-bound in eager mode: host speed sets their time


def small_decode_steps(raw: list[dict[str, Any]], its: pa.Table) -> dict[str, Any] | None:
    """Decode-only steps of <= SMALL_DECODE_SEQS sequences: calibrated per repeat, and as served per scenario.

    Calibration: the median over those points of each repeat's step time. Serving: each scenario's median step
    and the share of its steps slower than 1.3x the fastest repeat's median. None without such points.
    """
    small_points = [r for r in raw
                    if r["status"] == "ok" and r["kind"] == "decode" and r["decode_seqs"] <= SMALL_DECODE_SEQS]
    if not small_points:
        return None
    by_repeat: dict[int, list[float]] = defaultdict(list)
    for r in small_points:
        by_repeat[int(r["repeat"])].append(r["step_time_s"] * 1e3)
    repeats = {k: float(np.median(v)) for k, v in sorted(by_repeat.items())}
    slow_ms = 1.3 * min(repeats.values())
    col = {c: its.column(c).to_numpy(zero_copy_only=False)
           for c in ("scenario", "prefill_tokens", "decode_seqs", "run_s")}
    small = (col["prefill_tokens"] == 0) & (col["decode_seqs"] > 0) & (col["decode_seqs"] <= SMALL_DECODE_SEQS)
    serving = []
    for name in dict.fromkeys(col["scenario"][small]):
        steps = col["run_s"][small & (col["scenario"] == name)] * 1e3
        serving.append({"scenario": str(name), "steps": int(steps.size), "median_ms": float(np.median(steps)),
                        "slow_share": float(np.mean(steps > slow_ms))})
    return {"calibration_median_ms_by_repeat": repeats, "slow_over_ms": slow_ms, "serving": serving}


def short_recal_facts(profile: GPUProfile, raw: list[dict[str, Any]]) -> dict[str, Any] | None:
    """For a profile made by a short re-calibration: its base, its scales, how it met its points, the sweep's length.

    None for a fully calibrated profile.
    """
    base = profile.method.get("short_recalibration_of")
    if not base:
        return None
    stamps = [r["unix_time_s"] for r in raw]
    return {"base_sha256": base["content_sha256"], "base_date": base["date"], "base_gpu": base["gpu"],
            "scales": profile.notes.rsplit("short re-calibration ", 1)[-1].split("): ", 1)[-1],
            "errors": profile.fit_errors.get("short_recalibration"), "points": len(_measured_points(raw)),
            "sweep_span_s": max(stamps) - min(stamps) if stamps else None}


def gpu_uuid(gpu: dict[str, Any]) -> str | None:
    """The UUID of a run's first GPU, or None when the run did not record one."""
    return gpu_uuids(gpu)[0]


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def pair_facts(run: dict[str, Any], other: GPUProfile, other_run: dict[str, Any] | None) -> dict[str, Any]:
    """What the run's calibration and another calibration have in common (the carry-over pair's identity)."""
    mine = run["profile"]
    uuid_a, uuid_b = gpu_uuid(run["doc"]["gpu"]), gpu_uuid(other_run["doc"]["gpu"] if other_run else other.gpu)
    facts = {"gpu_a": mine.gpu.get("name"), "gpu_b": other.gpu.get("name"), "uuid_a": uuid_a, "uuid_b": uuid_b,
             "same_uuid": None if uuid_a is None or uuid_b is None else uuid_a == uuid_b,
             "driver_a": mine.gpu.get("driver"), "driver_b": other.gpu.get("driver"),
             "host_cpu_a": mine.host.get("cpu_model"), "host_cpu_b": other.host.get("cpu_model"),
             "calibration_date_b": other.date,
             "calibrations_apart_min": abs((_when(mine.date) - _when(other.date)).total_seconds()) / 60.0,
             "runs_gap_s": None, "earlier_run": None, "later_run": None}
    if other_run is not None:  # a run's `date` is written at its end; its start is `run_wall_s` earlier
        spans = sorted((_when(r["doc"]["date"]).timestamp() - r["doc"]["run_wall_s"],
                        _when(r["doc"]["date"]).timestamp(), r["name"]) for r in (run, other_run))
        facts.update(runs_gap_s=spans[1][0] - spans[0][1], earlier_run=spans[0][2], later_run=spans[1][2])
    return facts


def _same_requests(a: pa.Table, b: pa.Table) -> bool:
    cols = ("arrival_s", "input_tokens", "output_tokens")
    return a.num_rows == b.num_rows and all(
        np.allclose(a.column(c).to_numpy(), b.column(c).to_numpy(), rtol=0, atol=1e-9) for c in cols)


def repeatability(entries_a: list[dict[str, Any]], entries_b: list[dict[str, Any]],
                  requests_a: pa.Table, requests_b: pa.Table) -> list[dict[str, Any]]:
    """Per scenario replayed in both runs: measured values, their difference (b - a) / a, and the sim errors."""
    by_name = {e["scenario"]: e for e in entries_b}
    out = []
    for a in entries_a:
        b = by_name.get(a["scenario"])
        if b is None or a["spec"] != b["spec"]:
            continue
        rows = [t.filter(pc.equal(t.column("scenario"), a["scenario"])) for t in (requests_a, requests_b)]
        out.append({"scenario": a["scenario"], "same_requests": _same_requests(*rows),
                    "measured_a": {m: a["measured"][m] for m in REPEAT_METRICS},
                    "measured_b": {m: b["measured"][m] for m in REPEAT_METRICS},
                    "difference": {m: rel_error(b["measured"][m], a["measured"][m]) for m in REPEAT_METRICS},
                    "error_a": {m: a["error"][m] for m in REPEAT_METRICS},
                    "error_b": {m: b["error"][m] for m in REPEAT_METRICS}})
    return out


def repeatability_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric: median and max |run-to-run difference| beside the median |simulator error| of each run."""
    out = {}
    for m in REPEAT_METRICS:
        diff = [abs(r["difference"][m]) for r in rows if r["difference"][m] is not None]
        if diff:
            out[m] = {"median_abs_difference": float(np.median(diff)), "max_abs_difference": max(diff)}
            for k in ("a", "b"):
                errs = [abs(r[f"error_{k}"][m]) for r in rows if r[f"error_{k}"][m] is not None]
                out[m][f"median_abs_error_{k}"] = float(np.median(errs)) if errs else None
    return out
