"""Check a composed profile against whole iterations measured for that model: relative error per point, by kind.

The measured points are a model-specific calibration's raw sweep (`*.raw.parquet`: `prefill_json`, `decode_json`,
`step_time_s`, `energy_per_step_j`, `kind`, `status`); the composed profile prices each point's IterationShape with
its curves (GPU time and energy, as the raw sweep times `runner.run` alone). Torch-free.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tokenjoule.calibrate.cost_form import IterFeatures
from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.kernels.shape import IterationShape

COLUMNS = ("kind", "status", "prefill_json", "decode_json", "step_time_s", "energy_per_step_j")


def measured_points(raw_path: str | Path) -> list[dict[str, Any]]:
    """The sweep's successful points: kind, IterationShape, measured seconds and joules per step."""
    table = pq.read_table(raw_path, columns=list(COLUMNS))
    out = []
    for row in table.to_pylist():
        if row["status"] != "ok" or row["energy_per_step_j"] is None:
            continue
        shape = IterationShape(prefill=tuple(tuple(c) for c in json.loads(row["prefill_json"])),
                               decode=tuple(json.loads(row["decode_json"])))
        out.append({"kind": row["kind"], "shape": shape, "time_s": row["step_time_s"],
                    "energy_j": row["energy_per_step_j"]})
    return out


def ragged_decode_points(iterations_path: str | Path, scenario_prefix: str = "warmup") -> list[dict[str, Any]]:
    """Decode-only iterations of a replay whose contexts differ (the longest above the mean), with their features.

    `iterations_path` is a validation run's `iterations.parquet`; only scenarios whose name starts with
    `scenario_prefix` are read (by default the warm-up replays, which no validation scenario shares).
    """
    out = []
    for row in pq.read_table(iterations_path).to_pylist():
        seqs = row["decode_seqs"]
        if (not row["scenario"].startswith(scenario_prefix) or row["prefill_seqs"] or not seqs
                or row["decode_max_ctx_tokens"] * seqs <= row["decode_ctx_tokens"]):
            continue
        out.append({"features": IterFeatures(row["new_tokens"], 0, 0, row["decode_ctx_tokens"], seqs, 0,
                                             row["decode_max_ctx_tokens"]), "time_s": row["run_s"]})
    return out


def row_features(row: Mapping[str, Any]) -> IterFeatures:
    """The features of one row of a replay's `iterations.parquet` (its columns carry IterFeatures' field names)."""
    return IterFeatures(**{f.name: row[f.name] for f in dataclasses.fields(IterFeatures)})


def replay_iterations(iterations_path: str | Path, scenario_prefix: str = "warmup") -> list[dict[str, Any]]:
    """Every iteration of a replay's warm-up scenarios: kind, features, GPU-run and serving-loop host seconds.

    Kinds as the quick grid names them ("decode", "prefill", "mixed": prefill chunks beside decodes); `time_s` is
    `ModelRunner.run`'s time, `host_s` the loop's scheduling and commit around it. Only scenarios whose name starts
    with `scenario_prefix` are read (by default the warm-up replays, which no validation scenario shares).
    """
    out = []
    for row in pq.read_table(iterations_path).to_pylist():
        if not row["scenario"].startswith(scenario_prefix):
            continue
        decode, prefill = row["decode_seqs"], row["prefill_seqs"]
        kind = "mixed" if decode and prefill else "prefill" if prefill else "decode"
        out.append({"kind": kind, "features": row_features(row), "time_s": row["run_s"], "host_s": row["host_s"]})
    return out


def compare_points(profile: GPUProfile, points: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Relative errors of `profile`'s latency and energy on measured points: median, p95 and signed median by kind.

    Args:
        profile: the (composed) profile.
        points: `measured_points`' output.

    Returns:
        {kind or "all": {"n", "latency_median", "latency_p95", "latency_bias", "energy_median", ...}}; bias is
        the median of (predicted / measured - 1).
    """
    by_kind: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        t, e = profile.cost(p["shape"])
        ratios = (t / p["time_s"] - 1.0, e / p["energy_j"] - 1.0)
        by_kind.setdefault(p["kind"], []).append(ratios)
        by_kind.setdefault("all", []).append(ratios)
    table = {}
    for kind, ratios in sorted(by_kind.items()):
        r = np.array(ratios)
        row: dict[str, Any] = {"n": len(r)}
        for i, name in enumerate(("latency", "energy")):
            row[f"{name}_median"] = float(np.median(np.abs(r[:, i])))
            row[f"{name}_p95"] = float(np.percentile(np.abs(r[:, i]), 95))
            row[f"{name}_bias"] = float(np.median(r[:, i]))
        table[kind] = row
    return table


def format_table(title: str, table: dict[str, dict[str, Any]]) -> str:
    """The comparison as aligned text lines."""
    lines = [title, f"{'kind':10s} {'n':>4s}  latency med / p95 / bias      energy med / p95 / bias"]
    for kind, r in table.items():
        lines.append(f"{kind:10s} {r['n']:4d}  {r['latency_median']:6.1%} / {r['latency_p95']:6.1%} / "
                     f"{r['latency_bias']:+7.1%}   {r['energy_median']:6.1%} / {r['energy_p95']:6.1%} / "
                     f"{r['energy_bias']:+7.1%}")
    return "\n".join(lines)
