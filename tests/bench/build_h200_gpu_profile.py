"""Rebuild calibrate/profiles/h200-gpu-tokenjoule-cudagraph.json from its measured files (CPU only, deterministic).

Run: python tests/bench/build_h200_gpu_profile.py. Operator fits from the fourth H200 lease's operator sweep
(2026-12-03, GEMMs and decode attention cycling through inputs larger than L2) and its metadata; whole-iteration
overheads fitted on every model replayed in that same lease: their quick grids, and the ragged decode iterations of
their warm-up replays (the validation scenarios are never fitted on). `tokenjoule validate models` shows how each
model fares when its own measurements are left out of this fit.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenjoule.calibrate.gpu_profile import build_gpu_profile, save_gpu_profile
from tokenjoule.calibrate.validate.models import fit_on, measured_iterations, model_runs
from tokenjoule.kernels.spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "calibrate" / "profiles"
SWEEP = ROOT / "measurements" / "h200_lease4_2026-12-03" / "ops"
LEASE = REPO / "validation" / "h200_2026-12-03_models"
OUT = ROOT / "h200-gpu-tokenjoule-cudagraph.json"
NOTES = ("Operator fits of measured points (H200 operator sweep of 2026-12-03, fourth lease: GEMMs and decode "
         "attention read inputs larger than L2). Everything a composed profile prices from it is MODELED, not "
         "measured. `overheads` are FITTED on measured whole iterations of the 7 models replayed in the same lease "
         "(quick grids and warm-up replays; validation/h200_2026-12-03_models). Rebuilt by "
         "tests/bench/build_h200_gpu_profile.py.")


def build():
    """The profile: operator fits, then overheads fitted on every model folder of the lease."""
    gpu = build_gpu_profile([SWEEP / "operators.raw.parquet"], SWEEP / "operators.meta.json", ROOT, notes=NOTES)
    runs = []
    for folder in model_runs(LEASE):
        doc = json.loads((folder / "validation.json").read_text())
        runs.append({"dir": folder, "spec": ModelSpec.from_name(doc["model"]), **measured_iterations(folder, doc)})
    return fit_on(gpu, runs, prefix=f"{LEASE.relative_to(REPO)}/")

if __name__ == "__main__":
    print(f"wrote {save_gpu_profile(build(), OUT)}")
