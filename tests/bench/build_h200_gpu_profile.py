"""Rebuild calibrate/profiles/h200-gpu-tokenjoule-cudagraph.json from its measured files (CPU only, deterministic).

Run: python tests/bench/build_h200_gpu_profile.py. Operator fits from the H200 operator sweep (parts 1 and 2 of
2026-12-03) and its metadata; whole-iteration overheads fitted on the OLMoE-1B-7B quick grid only (same lease as part
2), because the leave-one-model-out check (`tests/bench/compose_check.py`) generalises better that way: fitted on
OLMoE, Llama-3.1-8B's latency error goes from 18.5% to 10.8% (median) and its energy error from 18.8% to 16.2%; fitted
on Llama, OLMoE's latency goes from 29.1% to 18.5% but its energy from 11.9% to 24.3%. Llama stays held out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tokenjoule.calibrate.compose_check import measured_points
from tokenjoule.calibrate.gpu_profile import build_gpu_profile, save_gpu_profile
from tokenjoule.calibrate.overhead_fit import fit_overheads
from tokenjoule.kernels.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[2] / "calibrate" / "profiles"
SWEEP = ROOT / "measurements" / "h200_operators_2026-12-03"
OUT = ROOT / "h200-gpu-tokenjoule-cudagraph.json"
FIT_ON = {"olmoe-1b-7b": SWEEP / "h200-olmoe-1b-7b-tokenjoule-cudagraph-quick.raw.parquet"}
NOTES = ("Operator fits of measured points (H200 operator sweep 2026-12-03, parts 1 and 2: two leases, possibly two "
         "H200s). Everything a composed profile prices from it is MODELED, not measured. `overheads` are FITTED on "
         "measured whole iterations of OLMoE-1B-7B only (quick grid, lease 2); Llama-3.1-8B's iterations are held out "
         "(tests/bench/compose_check.py). Rebuilt by tests/bench/build_h200_gpu_profile.py.")


def build():
    """The profile: operator fits, then overheads fitted on FIT_ON's measured iterations."""
    gpu = build_gpu_profile([SWEEP / "operators.part1.raw.parquet", SWEEP / "operators.part2.raw.parquet"],
                            SWEEP / "operators.part2.meta.json", ROOT, notes=NOTES)
    data = [(ModelSpec.from_name(name), measured_points(raw)) for name, raw in FIT_ON.items()]
    overheads = fit_overheads(gpu, data, [str(raw.relative_to(ROOT)) for raw in FIT_ON.values()])
    return dataclasses.replace(gpu, overheads=overheads)


if __name__ == "__main__":
    print(f"wrote {save_gpu_profile(build(), OUT)}")
