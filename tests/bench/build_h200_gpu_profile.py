"""Rebuild the shipped H200 GPU profiles from their measured files (CPU only, deterministic).

Run: python tests/bench/build_h200_gpu_profile.py. Both profiles share the operator fits of the fourth H200 lease's
operator sweep (2026-12-03, GEMMs and decode attention cycling through inputs larger than L2) and its metadata; their
whole-iteration overheads are fitted on the models replayed in that lease in the profile's engine mode: their quick
grids, and the iterations of their warm-up replays (the validation scenarios are never fitted on).

- calibrate/profiles/h200-gpu-tokenjoule-cudagraph.json: CUDA-graph decode, eager prefill; 7 models
  (validation/h200_2026-12-03_models).
- calibrate/profiles/h200-gpu-tokenjoule-eager.json: every iteration eager; 6 models, 2 replayed on the sweep's
  H200 (validation/h200_2026-12-03_models_eager: llama-3.1-8b, olmoe-1b-7b) and 4 on another H200 host
  (validation/h200_2026-12-03_models_eager_lease5), so its overheads are rough.

`tokenjoule validate models` shows how each model fares when its own measurements are left out of the fit.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tokenjoule.calibrate.gpu_profile import build_gpu_profile, save_gpu_profile
from tokenjoule.calibrate.validate.models import fit_on, measured_iterations, model_runs
from tokenjoule.kernels.spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "calibrate" / "profiles"
SWEEP = ROOT / "measurements" / "h200_lease4_2026-12-03" / "ops"
LEASES = {"cudagraph": [REPO / "validation" / "h200_2026-12-03_models"],
          "eager": [REPO / "validation" / "h200_2026-12-03_models_eager",
                    REPO / "validation" / "h200_2026-12-03_models_eager_lease5"]}
NOTES = {
    "cudagraph": "Operator fits of measured points (H200 operator sweep of 2026-12-03, fourth lease: GEMMs and decode "
                 "attention read inputs larger than L2). Everything a composed profile prices from it is MODELED, not "
                 "measured. `overheads` are FITTED on measured whole iterations of the 7 models replayed in the same "
                 "lease with CUDA graphs (quick grids and warm-up replays; validation/h200_2026-12-03_models). "
                 "Rebuilt by tests/bench/build_h200_gpu_profile.py.",
    "eager": ("ROUGH. Operator fits of measured points (H200 operator sweep of 2026-12-03, fourth lease), for the "
              "engine in eager mode (no CUDA graphs: every iteration's kernels launched from Python). Everything a "
              "composed profile prices from it is MODELED, not measured. `overheads` are FITTED on measured whole "
              "iterations of 6 models replayed eagerly (quick grids and warm-up replays): llama-3.1-8b and "
              "olmoe-1b-7b in the same lease (validation/h200_2026-12-03_models_eager), 4 more on another H200 host "
              "(validation/h200_2026-12-03_models_eager_lease5). Rebuilt by tests/bench/build_h200_gpu_profile.py."),
}


def out_path(mode: str) -> Path:
    """The shipped GPU profile of an engine mode."""
    return ROOT / f"h200-gpu-tokenjoule-{mode}.json"


def build(mode: str = "cudagraph"):
    """The profile of `mode`: operator fits, then overheads fitted on every model folder of that mode's leases."""
    gpu = build_gpu_profile([SWEEP / "operators.raw.parquet"], SWEEP / "operators.meta.json", ROOT, notes=NOTES[mode])
    gpu = dataclasses.replace(gpu, mode=mode)
    runs = []
    for folder in model_runs(LEASES[mode]):
        doc = json.loads((folder / "validation.json").read_text())
        runs.append({"dir": folder, "spec": ModelSpec.from_name(doc["model"]), **measured_iterations(folder, doc),
                     "prefix": f"{folder.parent.relative_to(REPO)}/"})
    return fit_on(gpu, runs)


if __name__ == "__main__":
    for engine_mode in LEASES:
        print(f"wrote {save_gpu_profile(build(engine_mode), out_path(engine_mode))}")
