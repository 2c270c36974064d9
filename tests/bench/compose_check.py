"""Compose Llama-3.1-8B and OLMoE-1B-7B from the shipped H200 GPU profile; compare with their measured iterations.

Run: python tests/bench/compose_check.py. The Llama points come from another H200 machine (2026-12-02) than the
operator sweep; the OLMoE quick grid from the same lease as part 2 of the sweep.
"""

from __future__ import annotations

from pathlib import Path

from tokenjoule.calibrate.compose import compose_profile
from tokenjoule.calibrate.compose_check import compare_points, format_table, measured_points
from tokenjoule.calibrate.gpu_profile import load_gpu_profile
from tokenjoule.kernels.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2] / "calibrate" / "profiles"
CHECKS = {
    "llama-3.1-8b": ROOT / "h200-llama-3.1-8b-tokenjoule-cudagraph.raw.parquet",
    "olmoe-1b-7b": ROOT / "measurements" / "h200_operators_2026-12-03"
    / "h200-olmoe-1b-7b-tokenjoule-cudagraph-quick.raw.parquet",
}

if __name__ == "__main__":
    gpu = load_gpu_profile(ROOT / "h200-gpu-tokenjoule-cudagraph.json")
    for name, raw in CHECKS.items():
        profile = compose_profile(gpu, ModelSpec.from_name(name), "h200-gpu-tokenjoule-cudagraph")
        print(format_table(f"{name}: composed vs measured ({raw.name})", compare_points(profile, measured_points(raw))))
        print()
