"""Compose models from the H200 GPU profile and compare with their measured iterations.

Run: python tests/bench/compose_check.py. The Llama-3.1-8B points come from another H200 machine (2026-12-02) than the
operator sweep; the OLMoE quick grid from the same lease as part 2 of the sweep. For those two it prints the
composition without whole-iteration overheads ("before"), with overheads fitted on the *other* model only
(leave-one-model-out: held out), and with the shipped profile's overheads (held out only where `fitted_on` does not
name that model's file). Then three models whose iterations no fit has seen (`HELD_OUT`: quick grids measured in a
third lease, on a third H200, 2026-12-03), against the shipped profile.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.compose_check import compare_points, format_table, measured_points
from tokenjoule.calibrate.gpu_profile import load_gpu_profile
from tokenjoule.calibrate.overhead_fit import fit_overheads
from tokenjoule.kernels.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2] / "calibrate" / "profiles"
CHECKS = {
    "llama-3.1-8b": ROOT / "h200-llama-3.1-8b-tokenjoule-cudagraph.raw.parquet",
    "olmoe-1b-7b": ROOT / "measurements" / "h200_operators_2026-12-03"
    / "h200-olmoe-1b-7b-tokenjoule-cudagraph-quick.raw.parquet",
}

LEASE3 = ROOT / "measurements" / "h200_lease3_2026-12-03"
HELD_OUT = {name: LEASE3 / name / f"h200-{name}-tokenjoule-cudagraph-quick.raw.parquet"
            for name in ("llama-3.2-1b", "qwen2.5-7b", "qwen1.5-moe-a2.7b")}


def _terms(overheads) -> str:
    return (f"host {overheads.eager_host_s_per_launch * 1e6:.1f} us/launch at {overheads.host_wait_power_w:.0f} W, "
            f"graph gap {overheads.graph_gap_s_per_layer * 1e6:.1f} us/layer at {overheads.graph_gap_power_w:.0f} W, "
            f"decode prep {overheads.decode_host_s_per_seq * 1e6:.2f} us/seq")


if __name__ == "__main__":
    shipped = load_gpu_profile(ROOT / "h200-gpu-tokenjoule-cudagraph.json")
    bare = dataclasses.replace(shipped, overheads=None)
    data = {name: (ModelSpec.from_name(name), measured_points(raw)) for name, raw in CHECKS.items()}
    for name, raw in CHECKS.items():
        spec, points = data[name]
        other = next(n for n in CHECKS if n != name)
        loo = fit_overheads(bare, [data[other]], [CHECKS[other].name])
        print(f"=== {name} ({raw.name}, {len(points)} points)")
        print(format_table("before: no whole-iteration overheads", compare_points(compose_profile(bare, spec),
                                                                                    points)))
        print(format_table(f"held out: overheads fitted on {other} only ({_terms(loo)})",
                           compare_points(compose_profile(dataclasses.replace(bare, overheads=loo), spec), points)))
        if shipped.overheads is not None:
            held = "held out" if raw.name not in " ".join(shipped.overheads.fitted_on) else "NOT held out"
            print(format_table(f"shipped profile ({held}: fitted on {', '.join(shipped.overheads.fitted_on)})",
                               compare_points(compose_profile(shipped, spec), points)))
        print()
    for name, raw in HELD_OUT.items():
        points = measured_points(raw)
        print(f"=== {name} ({raw.name}, {len(points)} points; held out: no fit saw this model's iterations)")
        print(format_table("before: no whole-iteration overheads",
                           compare_points(compose_profile(bare, ModelSpec.from_name(name)), points)))
        print(format_table(f"shipped profile (overheads fitted on {', '.join(shipped.overheads.fitted_on)})",
                           compare_points(compose_profile(shipped, ModelSpec.from_name(name)), points)))
        print()
