"""Why host-bound prefills run slower in replays than in a loop: the same prefill stepped alone and served in a replay.

Why: on the ninth lease Llama-3.2-1B's replayed prefills took about 17.7 ms, twice what tight loops of the engine's
step() gave for as many layers on that machine and others (`host_blocks_gpu.py`, `prefill_host_gpu.py`,
`prefill_graph_gpu.py`), and the leave-one-model-out TTFT misses follow that host time. A replay differs from a loop
in a few ways at once: the power sampler thread runs beside it (`validate run` samples power every 0.1 s); every
prompt has its own length; the serving loop schedules, commits and sleeps for arrivals between iterations; and the
engine is built as a replay builds it (CUDA-graph decode, 90% of memory). This times one engine's prefill iterations
under each piece, in rounds of a fresh shuffled order:

- `loop`: one prepared 400-token prefill, step() again and again (as calibration's quick grid does);
- `loop_sampler`: the same with the power sampler running;
- `loop_small`: `loop` on a second runner of the same model built small (eager, 20% of memory, 8 sequences, as
  `prefill_graph_gpu.py` builds it), in the same process;
- `replay_same`: a replay of single requests spaced 60 ms apart, every prompt 400 tokens, 2 output tokens;
- `replay_new`: the same with prompts of 350-450 tokens (each new to the engine within the round);
- `replay_new_sampler`: `replay_new` with the power sampler running, as `validate run` replays.

A replay's figure is the median `run_s` (the runner's time, as `iterations.parquet` records it) of its prefill-only
iterations; a loop's is the median step() time.

    python tests/bench/replay_host_gpu.py --out "$OUT" [--rounds 6] [--models llama-3.2-1b olmoe-1b-7b]
    python tests/bench/replay_host_gpu.py --summarize FILE.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np

MODELS = ("llama-3.2-1b", "olmoe-1b-7b")
TOKENS = 400
STEPS = 10
REQUESTS = 12
SPACING_S = 0.06
WAYS = ("loop", "loop_sampler", "loop_small", "replay_same", "replay_new", "replay_new_sampler")
# The caching allocator's counters read around each visit: device allocations and frees (cudaMalloc / cudaFree, the
# latter synchronizing) and retries after freeing cached blocks.
ALLOC_STATS = ("num_device_alloc", "num_device_free", "num_alloc_retries")
_IDS = itertools.count()  # request ids unique over every replay of the run


def _requests(lengths: list[int]):
    from tokenjoule.calibrate.validate.replay import ReplayRequest

    return [ReplayRequest(next(_IDS), i * SPACING_S, n, 2) for i, n in enumerate(lengths)]


def _visit(way: str, engine, runners: dict, meter, lengths: list[int]) -> dict:
    """One way's figure (median seconds, how many iterations it is over) and the allocator's counts during it."""
    import torch

    before = torch.cuda.memory_stats()
    out = _timed_visit(way, engine, runners, meter, lengths)
    after = torch.cuda.memory_stats()
    return {**out, **{k: after.get(k, 0) - before.get(k, 0) for k in ALLOC_STATS}}


def _timed_visit(way: str, engine, runners: dict, meter, lengths: list[int]) -> dict:
    from tokenjoule.calibrate.measure.sampler import PowerSampler
    from tokenjoule.calibrate.validate.replay import replay
    from tokenjoule.kernels.shape import IterationShape

    sampler = PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock).start() if "sampler" in way else None
    try:
        if way.startswith("loop"):
            runner = runners["small" if way == "loop_small" else "engine"]
            runner.prepare(IterationShape(prefill=((TOKENS, 0),)))
            times = []
            for _ in range(STEPS):
                t0 = time.perf_counter()
                runner.step()
                times.append(time.perf_counter() - t0)
            runner.release()
            return {"time_s": statistics.median(times), "n": len(times)}
        prompts = [TOKENS] * REQUESTS if way == "replay_same" else lengths
        result = replay(engine, _requests(prompts), meter, name=way, max_wall_s=30.0)
        prefills = [it["run_s"] for it in result.iterations if it["prefill_seqs"] and not it["decode_seqs"]]
        return {"time_s": statistics.median(prefills), "n": len(prefills)}
    finally:
        if sampler is not None:
            sampler.stop()


def _measure_model(name: str, rounds: int, order: random.Random, meter, rows: list[dict]) -> None:
    from tokenjoule.calibrate.validate.replay import build_engine
    from tokenjoule.kernels.iteration import TokenjouleIterationRunner, build_runner
    from tokenjoule.kernels.runner import RunnerConfig
    from tokenjoule.kernels.spec import load_spec

    spec = load_spec(name)
    small = build_runner(spec, engine="tokenjoule", mode="eager", device="cuda", gpu_memory_utilization=0.2,
                         max_num_seqs=8, max_num_batched_tokens=2048)  # first: utilization counts memory in use
    config = RunnerConfig(mode="cudagraph", device="cuda", gpu_memory_utilization=0.9, max_num_seqs=256,
                          max_num_batched_tokens=8192)
    engine = build_engine(spec, config, policy="continuous")
    runners = {"engine": TokenjouleIterationRunner(spec, config, runner=engine.runner), "small": small}
    lengths = iter(order.sample(range(TOKENS - 50, TOKENS + 51), 101) * rounds)
    _visit("replay_same", engine, runners, meter, [])  # warm-up: the serving path's first calls
    for r in range(rounds):
        fresh = [next(lengths) for _ in range(REQUESTS)]
        for way in order.sample(WAYS, len(WAYS)):
            rows.append({"model": name, "round": r, "way": way, **_visit(way, engine, runners, meter, fresh)})


def summarize(path: Path) -> None:
    """Per model and way: median over rounds and the rounds' p90/p10."""
    rows = json.loads(path.read_text())["rows"]
    print("| model | way | ms, median over rounds (p90/p10) | " + " | ".join(ALLOC_STATS) + " per iteration |")
    print("|---|---|---:|" + "---:|" * len(ALLOC_STATS))
    for model in dict.fromkeys(r["model"] for r in rows):
        for way in WAYS:
            mine = [r for r in rows if r["model"] == model and r["way"] == way]
            if not mine:
                continue
            times = [r["time_s"] for r in mine]
            p10, p90 = np.percentile(times, [10, 90])
            n = sum(r["n"] for r in mine)
            counts = [f"{sum(r[k] for r in mine) / n:.2f}" if all(k in r for r in mine) else "-" for k in ALLOC_STATS]
            print(f"| {model} | {way} | {statistics.median(times) * 1e3:.2f} (x{p90 / p10:.2f}) | "
                  + " | ".join(counts) + " |")


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="measure on the GPU and write replay_host.json here")
    what.add_argument("--summarize", type=Path, help="print the table of a written replay_host.json")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    import gc

    import torch
    from wait_power_gpu import write_result  # this folder (the script's own) is first on sys.path

    from tokenjoule.calibrate.measure.meters import make_meter

    meter = make_meter((0,))
    rows: list[dict] = []
    order = random.Random(0)
    for name in args.models:
        _measure_model(name, args.rounds, order, meter, rows)
        gc.collect()
        torch.cuda.empty_cache()
    write_result(args.out / "replay_host.json", meter, "tests/bench/replay_host_gpu.py",
                 f"{TOKENS}-token prefills: step() in a loop ({STEPS} per visit), or replays of {REQUESTS} single "
                 f"requests {SPACING_S * 1e3:.0f} ms apart (median run_s of their prefill-only iterations); "
                 "power sampler at 0.1 s where named", rows=rows)
    meter.close()
    summarize(args.out / "replay_host.json")


if __name__ == "__main__":
    main()
