"""How much a short scenario's measured energy moves with the counter's quantization, and with edge-aligned windows.

Why: the leave-one-model-out validation's largest energy miss (+11.9%) is on its shortest scenario, Llama-3.2-1B's
static batch (1.1 s, 325 J). `replay` measured it as a plain counter difference, quantized by up to a counter period's
energy at each edge. This replays the same static scenario back to back, each time with an edge-aligned window
(`calibrate/measure/edges.py`) and the plain difference over the same window, so the spread of each over identical
work is measured on the GPU. Run on the device from the repository root (writes $OUT/edge_windows.json):

    python tests/bench/edge_window_gpu.py --models llama-3.2-1b llama-3.1-8b --repeats 12
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from tokenjoule.calibrate.measure.machine import gpu_info, host_info, software_info
from tokenjoule.calibrate.measure.meters import make_meter
from tokenjoule.calibrate.validate.replay import build_engine, replay, use_policy
from tokenjoule.calibrate.validate.scenarios import SCENARIO_SETS, scenario_requests
from tokenjoule.kernels.runner import RunnerConfig
from tokenjoule.kernels.spec import ModelSpec

SCENARIO = "static_b8_i1024_o256_m"


def _spread(values: list[float]) -> dict[str, float]:
    mid = statistics.median(values)
    return {"median": mid, "min": min(values), "max": max(values),
            "max_over_min": max(values) / min(values), "max_abs_dev_from_median": max(abs(v / mid - 1) for v in values)}


def run_model(name: str, repeats: int, meter) -> dict:
    scenario = next(s for s in SCENARIO_SETS["models"] if s.name == SCENARIO)
    reqs = scenario_requests(scenario)
    t0 = time.perf_counter()
    engine = build_engine(ModelSpec.from_name(name), RunnerConfig(mode="cudagraph", device="cuda"))
    use_policy(engine, scenario.policy, scenario.max_num_seqs, scenario.max_num_batched_tokens)
    replay(engine, reqs, meter, name="warmup", static_batch=scenario.static_batch)  # captures the graphs it uses
    rows = []
    for i in range(repeats):
        r = replay(engine, reqs, meter, name=f"{SCENARIO}#{i}", static_batch=scenario.static_batch)
        rows.append({"repeat": i, "duration_s": r.duration_s, "energy_aligned_j": r.energy_j,
                     "aligned": r.meta["energy_aligned"], "bound_j": r.meta["energy_bound_j"],
                     "energy_raw_j": r.meta["energy_raw_j"], "idle_power_w": r.meta["idle_power_w"]})
        print(f"{name} #{i}: {r.duration_s:.3f} s aligned {r.energy_j:.1f} J (bound {r.meta['energy_bound_j']:.2f}) "
              f"raw {r.meta['energy_raw_j']:.1f} J idle {r.meta['idle_power_w']:.1f} W", flush=True)
    ok = [r for r in rows if r["aligned"]]
    return {"model": name, "scenario": SCENARIO, "wall_s": time.perf_counter() - t0, "repeats": rows,
            "aligned": _spread([r["energy_aligned_j"] for r in ok]) if ok else None,
            "raw": _spread([r["energy_raw_j"] for r in rows]),
            "duration": _spread([r["duration_s"] for r in rows])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["llama-3.2-1b"])
    parser.add_argument("--repeats", type=int, default=12)
    args = parser.parse_args()
    meter = make_meter((0,))
    doc = {"kind": "tokenjoule-edge-window-check", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "gpu": gpu_info(meter), "host": host_info(), "software": software_info(), "meter": meter.metadata(),
           "method": "the same static scenario replayed back to back on the tokenjoule engine (CUDA graphs, random "
                     "bf16 weights); per replay the edge-aligned energy (calibrate/measure/edges.py) and the plain "
                     "counter difference over the same window",
           "models": []}
    out = Path(os.environ.get("OUT", "."))
    for name in args.models:
        doc["models"].append(run_model(name, args.repeats, meter))
        (out / "edge_windows.json").write_text(json.dumps(doc, indent=1))
        gc.collect()  # the model's engine (weights, KV cache) goes before the next is built
        import torch

        torch.cuda.empty_cache()
    meter.close()
    for m in doc["models"]:
        print(m["model"], "aligned", m["aligned"], "raw", m["raw"], flush=True)


if __name__ == "__main__":
    main()
