"""How the engine's random-weight MoE models route: distinct experts and load per layer, against uniform routing.

Why: a CUDA-graph replay of OLMoE-1B-7B's 256-token prefill took 6.5 ms on two H200s (`prefill_graph_gpu.py`),
while the composition priced 8.2 ms from the operator sweep, whose MoE points route random inputs (about uniformly:
every expert touched at 128 tokens and more). Its MoE layers alone would need to run about 25% faster than the
sweep's to fit, and at 1,024 tokens the replay was 10% slower than priced. Both fit routing that is not uniform: fewer
distinct experts (less weight traffic) and uneven loads. Trained MoE models are trained toward balanced loads, and the
composition prices the expected distinct experts of uniform routing; this measures what the engine's random-weight
models do, layer by layer, for the iteration shapes the replays run.

For each model and shape it runs one iteration through the runner (as calibration does) with the engine's `route`
wrapped to record each MoE layer's expert ids, and records per layer: tokens, distinct experts, the uniform
expectation (`ModelSpec.expected_experts_touched`), and the largest expert's share of the (token, expert) pairs.

    python tests/bench/moe_routing_gpu.py --out "$OUT" [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

MODELS = ("olmoe-1b-7b", "qwen1.5-moe-a2.7b")
# (name, IterationShape arguments): prefills of one sequence, a decode batch over 512-token contexts, a mixed one.
SHAPES = (("prefill_256", {"prefill": ((256, 0),)}), ("prefill_1024", {"prefill": ((1024, 0),)}),
          ("decode_64", {"decode": (512,) * 64}), ("mixed_512_32", {"prefill": ((512, 0),), "decode": (512,) * 32}))


def measure(models: tuple[str, ...], device: str) -> list[dict]:
    """One row per (model, shape, layer)."""
    import torch

    from tokenjoule.kernels import model as engine_model
    from tokenjoule.kernels.iteration import build_runner
    from tokenjoule.kernels.shape import IterationShape
    from tokenjoule.kernels.spec import load_spec

    seen: list[torch.Tensor] = []
    original = engine_model.route

    def recording_route(logits, k, renormalize):
        weights, experts = original(logits, k, renormalize)
        seen.append(experts.detach().clone())
        return weights, experts

    rows = []
    engine_model.route = recording_route
    try:
        for name in models:
            spec = load_spec(name)
            runner = build_runner(spec, engine="tokenjoule", mode="eager", device=device, gpu_memory_utilization=0.5,
                                  max_num_seqs=128, max_num_batched_tokens=4096)
            try:
                for shape_name, shape in SHAPES:
                    runner.prepare(IterationShape(**shape))
                    seen.clear()
                    runner.step()
                    for layer, experts in enumerate(seen):
                        counts = torch.bincount(experts.flatten(), minlength=spec.n_experts)
                        tokens = experts.shape[0]
                        rows.append({"model": name, "shape": shape_name, "layer": layer, "tokens": tokens,
                                     "experts": spec.n_experts, "top_k": spec.n_experts_per_token,
                                     "distinct": int((counts > 0).sum()),
                                     "uniform_expected": float(spec.expected_experts_touched(tokens)),
                                     "max_share": float(counts.max() / counts.sum())})
                    runner.release()
            finally:
                runner.release()
                del runner
                torch.cuda.empty_cache() if device == "cuda" else None
    finally:
        engine_model.route = original
    return rows


def summarize(rows: list[dict]) -> None:
    """Per model and shape: distinct experts (median and range over layers) against uniform, the largest share."""
    print("| model | shape | tokens | distinct experts, median (min-max over layers) | uniform expected | "
          "largest expert's share, median (max) | 1 / experts |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for key in dict.fromkeys((r["model"], r["shape"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["shape"]) == key]
        d = [r["distinct"] for r in mine]
        s = [r["max_share"] for r in mine]
        print(f"| {key[0]} | {key[1]} | {mine[0]['tokens']} | {statistics.median(d):.0f} ({min(d)}-{max(d)}) | "
              f"{mine[0]['uniform_expected']:.1f} | {statistics.median(s):.3f} ({max(s):.3f}) | "
              f"{1 / mine[0]['experts']:.3f} |")


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    rows = measure(tuple(args.models), args.device)
    if args.device == "cuda":
        from wait_power_gpu import write_result  # this folder (the script's own) is first on sys.path

        from tokenjoule.calibrate.measure.meters import make_meter

        meter = make_meter((0,))
        write_result(args.out / "moe_routing.json", meter, "tests/bench/moe_routing_gpu.py",
                     "one iteration per shape through the runner's step(); the engine's route() wrapped to record "
                     "each MoE layer's expert ids", rows=rows)
        meter.close()
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "moe_routing.json").write_text(json.dumps({"rows": rows}, indent=1))
    summarize(rows)


if __name__ == "__main__":
    main()
