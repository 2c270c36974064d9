"""How long the engine's host takes per layer of each block kind, and how steady that is on one host: tiny models.

Why: an eager iteration (any prefill; in eager mode every one) of a small model lasts as long as the host takes to
launch its kernels. The composed profiles price that host time as counted launches times one seconds-per-launch,
fitted on the other models of a lease; the folds' fits swing from 30 to 60 us per launch, and hold-out TTFT misses
sit on the host-bound models (Llama-3.2-1B read -30% to -41% and the two MoE models up to +57% on the ninth lease,
docs/validation_models_lease9.md). This measures the host's side of the engine's own code with no GPU work in the way,
to tell whether a different structure (per layer of each block kind, per iteration, per mixed iteration) would price
it better than launch counts, and how much the host's speed moves while it is measured.

Method: tiny models built by the engine itself (hidden 256, head_dim 128, so the same attention kernels run; their
kernels take a few microseconds, under their launches, so an iteration's wall time is the host's), one variant per
block feature (`VARIANTS`), each at `LAYERS` layers; each iteration shape of `SHAPES` run by the runner's `step()`
(input metadata, launches, sampling, device sync), timed by `time.perf_counter`, in rounds that visit every
(variant, layers, shape) cell once (`measure_host_blocks`). `summarize` takes per layer = (t at 10 layers - t at 2) / 8
and per iteration = t at 2 layers - 2 x per layer within each round, then the median over rounds.

    python tests/bench/host_blocks_gpu.py --out "$OUT" [--rounds 10]      # on the device
    python tests/bench/host_blocks_gpu.py --summarize validation/h200_2026-12-04_host_blocks/host_blocks_rounds.json

Writes `host_blocks_rounds.json` (rows, with date, GPU, host, software, script and method). Output of 2026-12-04 is in
validation/h200_2026-12-04_host_blocks/ and its README.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from typing import Any

from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec

logger = logging.getLogger(__name__)

LAYERS = (2, 10)
TINY = ModelSpec(name="host-blocks-dense", n_layers=2, hidden_size=256, n_heads=2, n_kv_heads=1, head_dim=128,
                 intermediate_size=512, vocab_size=1024)
_MOE = {"n_experts": 8, "n_experts_per_token": 2, "moe_intermediate_size": 256}
# One block feature switched on per variant (the MoE ones on top of the plain MoE layer).
VARIANTS: dict[str, dict[str, Any]] = {
    "dense": {},
    "qkv_bias": {"qkv_bias": True},
    "qk_norm": {"qk_norm": True},
    "moe": _MOE,
    "moe_renorm": {**_MOE, "norm_topk_prob": True},
    "moe_shared": {**_MOE, "shared_expert_intermediate_size": 256},
    "moe_shared_gate": {**_MOE, "shared_expert_intermediate_size": 256, "shared_expert_gate": True},
}
CONTEXT = 64
TINY_MEMORY_SHARE = 0.02
# The eager iteration kinds of a serving loop: a prefill alone, one continuing its sequence (keys gathered from the
# cache), one beside 4 or 32 decoding sequences (the engine's mixed iterations), and decode alone (eager mode).
SHAPES = {
    "prefill": IterationShape(prefill=((64, 0),)),
    "prefill_ctx": IterationShape(prefill=((64, CONTEXT),)),
    "mixed": IterationShape(prefill=((64, 0),), decode=(CONTEXT,) * 4),
    "mixed_wide": IterationShape(prefill=((64, 0),), decode=(CONTEXT,) * 32),
    "decode": IterationShape(decode=(CONTEXT,) * 4),
}
METHOD = ("tiny models of the engine (hidden 256, head_dim 128), one per block variant, at 2 and 10 layers; each "
          "iteration shape run by the runner's step() (metadata, launches, sampling, sync), timed by perf_counter in "
          "rounds that visit every cell once (median of `steps` steps per visit); per layer = (t10 - t2) / 8 and per "
          "iteration = t2 - 2 x per layer within a round, median over rounds (tests/bench/host_blocks_gpu.py)")


def variant_spec(variant: str, layers: int) -> ModelSpec:
    """The tiny model of one variant at `layers` layers."""
    return dataclasses.replace(TINY, name=f"host-blocks-{variant}-{layers}l", n_layers=layers, **VARIANTS[variant])


def measure_host_blocks(device: str = "cuda", rounds: int = 8, steps: int = 5) -> list[dict[str, Any]]:
    """Host seconds of every (variant, layers, shape), measured in interleaved rounds: one row per cell and round.

    The host's speed moves by up to 1.7x within minutes (an H200 host, 2026-12-04: the same tiny MoE model took 15.6
    and then 9.0 ms per 10-layer prefill, 15 minutes apart, each run's own p10-p90 spread under 10%), so every round
    visits every cell once (`prepare` and its step, then `steps` timed steps; the round's median kept): differences
    taken within a round see one speed.

    Args:
        device: where the tiny models run.
        rounds: visits of every cell.
        steps: timed steps per visit.

    Returns:
        Rows with `round`, `variant`, `layers`, `shape`, `time_s` (the visit's median), `steps`.
    """
    from tokenjoule.kernels.iteration import build_runner
    cells = [(variant, layers) for variant in VARIANTS for layers in LAYERS]
    # A runner sizes its KV cache to a share of the whole GPU's memory, counting what is already used: the i-th
    # runner's share grows by one tiny model's (2%) to leave it room.
    runners = {cell: build_runner(variant_spec(*cell), engine="tokenjoule", mode="eager", device=device,
                           gpu_memory_utilization=TINY_MEMORY_SHARE * (i + 1), max_num_seqs=64,
                           max_num_batched_tokens=1024)
               for i, cell in enumerate(cells)}
    rows = []
    try:
        for r in range(rounds):
            for (variant, layers), runner in runners.items():
                for name, shape in SHAPES.items():
                    runner.prepare(shape)
                    times = []
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        runner.step()
                        times.append(time.perf_counter() - t0)
                    rows.append({"round": r, "variant": variant, "layers": layers, "shape": name,
                                 "time_s": statistics.median(times), "steps": steps})
            logger.info("host blocks: round %d of %d", r + 1, rounds)
    finally:
        for runner in runners.values():
            runner.release()
        runners.clear()
        _free(device)
    return rows


def _free(device: str) -> None:
    """Return the tiny models' memory (weights and KV caches) once they are dropped."""
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (variant, shape): medians over rounds of per-layer and per-iteration host seconds, the rounds' p10/p90.

    Each round's per-layer figure is (t at 10 layers - t at 2) / 8, its per-iteration one t at 2 - 2 x per layer.
    """
    import numpy as np

    cells: dict[tuple[str, str], dict[tuple[int, int], float]] = {}
    for r in rows:
        cells.setdefault((r["variant"], r["shape"]), {})[(r["round"], r["layers"])] = r["time_s"]
    lo, hi = LAYERS
    out = []
    for (variant, shape), times in cells.items():
        rounds = sorted({r for r, _ in times})
        per_layer = np.array([(times[(r, hi)] - times[(r, lo)]) / (hi - lo) for r in rounds])
        per_iter = np.array([times[(r, lo)] - lo * p for r, p in zip(rounds, per_layer, strict=True)])
        out.append({"variant": variant, "shape": shape, "per_layer_s": float(np.median(per_layer)),
                    "per_layer_p10_s": float(np.percentile(per_layer, 10)),
                    "per_layer_p90_s": float(np.percentile(per_layer, 90)),
                    "per_iteration_s": float(np.median(per_iter)), "rounds": len(rounds)})
    return out


def main() -> None:  # noqa: D103
    import argparse
    import json
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for host_blocks_rounds.json (measures: needs the GPU)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--summarize", type=Path, help="an earlier host_blocks_rounds.json: print its summary")
    args = parser.parse_args()
    if (args.out is None) == (args.summarize is None):
        parser.error("give --out (measure) or --summarize FILE (read an earlier run), one of them")
    if args.summarize is not None:
        doc = json.loads(args.summarize.read_text())
    else:
        from wait_power_gpu import write_result  # this folder (the script's own) is first on sys.path

        from tokenjoule.calibrate.measure.meters import make_meter

        t0 = time.time()
        rows = measure_host_blocks("cuda", rounds=args.rounds)
        meter = make_meter((0,))
        doc = {"wall_s": time.time() - t0, "rows": rows}
        write_result(args.out / "host_blocks_rounds.json", meter, "tests/bench/host_blocks_gpu.py", METHOD, **doc)
        meter.close()
    print(f"{'variant':16s} {'shape':11s} {'per layer us':>12s} {'rounds p10-p90':>16s} {'per iteration us':>17s}")
    for s in summarize(doc["rows"]):
        spread = f"{s['per_layer_p10_s'] * 1e6:.0f}-{s['per_layer_p90_s'] * 1e6:.0f}"
        print(f"{s['variant']:16s} {s['shape']:11s} {s['per_layer_s'] * 1e6:12.0f} {spread:>16s} "
              f"{s['per_iteration_s'] * 1e6:17.0f}")


if __name__ == "__main__":
    main()
