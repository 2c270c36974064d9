"""How much of a prefill is the host's: the eager prefill against the same forward replayed as a CUDA graph.

Why: the leave-one-model-out leases miss issue 16's TTFT target where prefills are host-bound (Llama-3.2-1B, the MoE
models), and the host's launch speed moved up to about 2x between machines and within minutes. A graph replay
launches the whole forward at once, so its time is the GPU's own work; set beside the eager step on the same
machine, in interleaved rounds, it says how much of a prefill the host decides and how much that part moves from
round to round, and it checks the composition's GPU time (the operator fits alone, host terms at zero) against a
measurement without the host in it.

For each model (random bf16 weights, one at a time) and prompt length (one sequence, no cached context), rounds in a
fresh shuffled order per round time:
- `step`: the runner's step() as calibration runs it (metadata, forward, greedy sampling, device sync);
- `forward`: the forward and argmax on inputs prepared once, then a device sync (no metadata);
- `graph`: the same forward and argmax captured once as a CUDA graph, replayed, then a device sync;
- `graph_events`: the graph replay timed by CUDA events (the GPU's time alone).

    python tests/bench/prefill_graph_gpu.py --out "$OUT" [--rounds 8]
    python tests/bench/prefill_graph_gpu.py --summarize FILE.json [--gpu-profile PROFILE.json]

Writes `prefill_graph.json` (rows and provenance). `--summarize` prints medians over rounds, each way's round
p10-p90 spread, and the composed GPU time (modeled) of the same prefill from a GPU profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

MODELS = ("llama-3.2-1b", "olmoe-1b-7b", "qwen1.5-moe-a2.7b", "llama-3.1-8b")
TOKENS = (256, 1024)
STEPS = 10
WAYS = ("step", "forward", "graph", "graph_events")
ROOT = Path(__file__).resolve().parents[2]
GPU_PROFILE = ROOT / "calibrate" / "profiles" / "h200-gpu-tokenjoule-cudagraph.json"


def _capture(model, ids, pos, meta):
    """The forward and argmax as a CUDA graph (warmed up on a side stream first, as torch's docs ask)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(ids, pos, meta).argmax(dim=-1)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(ids, pos, meta).argmax(dim=-1)
    torch.cuda.synchronize()
    return graph


def _visit(way: str, runner, model, inputs, graph) -> float:
    """Median seconds of STEPS calls of one way."""
    import torch

    times = []
    for _ in range(STEPS):
        if way == "graph_events":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            continue
        t0 = time.perf_counter()
        if way == "step":
            runner.step()
        elif way == "forward":
            model(*inputs).argmax(dim=-1)
            torch.cuda.synchronize()
        else:
            graph.replay()
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure_model(name: str, rounds: int, order: random.Random, rows: list[dict], failures: list[dict]) -> None:
    """One model's rounds, appended to `rows` (its runner freed on return)."""
    import torch

    from tokenjoule.kernels.iteration import build_runner
    from tokenjoule.kernels.shape import IterationShape
    from tokenjoule.kernels.spec import load_spec

    runner = build_runner(load_spec(name), engine="tokenjoule", mode="eager", device="cuda",
                          gpu_memory_utilization=0.6, max_num_seqs=8, max_num_batched_tokens=2048)
    try:
        for tokens in TOKENS:
            runner.prepare(IterationShape(prefill=((tokens, 0),)))
            inputs = runner.runner.prepare_inputs(runner._batch)
            model = runner.runner.model
            try:
                with torch.no_grad():
                    graph = _capture(model, *inputs)
            except Exception as err:  # noqa: BLE001 - a capture that fails is itself the finding
                failures.append({"model": name, "tokens": tokens, "error": f"{type(err).__name__}: {err}"})
                graph = None
            ways = [w for w in WAYS if graph is not None or not w.startswith("graph")]
            with torch.no_grad():
                for r in range(rounds):
                    for way in order.sample(ways, len(ways)):
                        rows.append({"model": name, "tokens": tokens, "round": r, "way": way,
                                     "time_s": _visit(way, runner, model, inputs, graph), "steps": STEPS})
    finally:
        runner.release()  # the next length's prepare() released the one before


def measure(models: tuple[str, ...], rounds: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Rows (model, tokens, round, way, median seconds) and failures (model, tokens, error), one model at a time."""
    import gc

    import torch

    order = random.Random(seed)
    rows: list[dict] = []
    failures: list[dict] = []
    for name in models:
        _measure_model(name, rounds, order, rows, failures)
        gc.collect()
        torch.cuda.empty_cache()
    return rows, failures


def composed_gpu_s(profile_path: Path, model: str, tokens: int) -> float:
    """Modeled: the composition's GPU time of a one-sequence prefill, every host term at zero."""
    from tokenjoule.calibrate.compose import compose_profile
    from tokenjoule.calibrate.compose_check import row_features
    from tokenjoule.calibrate.gpu_profile import load_gpu_profile
    from tokenjoule.kernels.spec import load_spec

    gpu = load_gpu_profile(profile_path)
    ov = gpu.overheads
    if ov is not None:
        ov = dataclasses.replace(ov, eager_host_s_per_launch=0.0, host_exposed_fraction=0.0)
    gpu = dataclasses.replace(gpu, overheads=ov, launch=dataclasses.replace(gpu.launch, eager_launch_s=0.0))
    profile = compose_profile(gpu, load_spec(model))
    row = {"prefill_seqs": 1, "decode_seqs": 0, "new_tokens": tokens,
           "prefill_attn_pairs": tokens * (tokens + 1) // 2, "prefill_ctx_tokens": 0, "decode_ctx_tokens": 0,
           "decode_max_ctx_tokens": 0}
    return profile.latency.table().iteration(row_features(row), profile.decode_split_rule)


def summarize(path: Path, profile_path: Path) -> None:
    """Medians over rounds, the rounds' p10-p90 spread, and the composed GPU time."""
    doc = json.loads(path.read_text())
    for failure in doc.get("failures", []):
        print(f"capture failed: {failure}")
    rows = doc["rows"]
    print("| model | tokens | " + " | ".join(f"{w} ms (p90/p10)" for w in WAYS) + " | composed GPU ms (modeled) |")
    print("|---|---:|" + "---:|" * (len(WAYS) + 1))
    for model, tokens in dict.fromkeys((r["model"], r["tokens"]) for r in rows):
        cells = []
        for way in WAYS:
            times = [r["time_s"] for r in rows if r["model"] == model and r["tokens"] == tokens and r["way"] == way]
            p10, p90 = np.percentile(times, [10, 90]) if times else (np.nan, np.nan)
            cells.append(f"{statistics.median(times) * 1e3:.2f} (x{p90 / p10:.2f})" if times else "-")
        composed = composed_gpu_s(profile_path, model, tokens)
        print(f"| {model} | {tokens} | " + " | ".join(cells) + f" | {composed * 1e3:.2f} |")


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="measure on the GPU and write prefill_graph.json here")
    what.add_argument("--summarize", type=Path, help="print the table of a written prefill_graph.json")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--gpu-profile", type=Path, default=GPU_PROFILE)
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize, args.gpu_profile)
        return
    from wait_power_gpu import write_result  # this folder (the script's own) is first on sys.path

    from tokenjoule.calibrate.measure.meters import make_meter

    rows, failures = measure(tuple(args.models), args.rounds)
    meter = make_meter((0,))
    write_result(args.out / "prefill_graph.json", meter, "tests/bench/prefill_graph_gpu.py",
                 f"one-sequence prefills of {list(TOKENS)} tokens, {STEPS} calls per visit, median of the visit; "
                 "perf_counter around step(), forward+argmax+sync, graph replay+sync; CUDA events around the replay",
                 rows=rows, failures=failures)
    meter.close()
    summarize(args.out / "prefill_graph.json", args.gpu_profile)


if __name__ == "__main__":
    main()
