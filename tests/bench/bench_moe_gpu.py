"""MoE on one GPU: grouped expert GEMMs (torch._grouped_mm) against the per-expert loop, and MoE models end to end.

Run on the GPU machine from the repo root (the tokenjoule package importable):

    PYTHONUNBUFFERED=1 python3 tests/bench/bench_moe_gpu.py [--models olmoe-1b-7b,mixtral-8x7b] [--out FILE]

1. The MoE MLP of each model alone (one layer, random bf16 weights): for several token counts T, the median time of
   the grouped backend and of the loop backend (CUDA events, warm-up first, 20 repeats), grouped == loop checked
   numerically on the same input. T = 1..8 is decode, where the loop pays one GEMM pair (and a host sync) per
   touched expert.
2. Each model whole through `ModelRunner`: prefill of a few shapes (eager) and batched decode steps, in "cudagraph"
   mode with the grouped backend (checks that MoE decode captures) and in "eager" mode with the loop backend.
Writes every figure and provenance (GPU, driver, torch, date) as JSON to --out (default $OUT/bench_moe_gpu.json).
Runs on CPU too, with tiny shapes (--cpu-smoke), to check the script itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from tokenjoule.kernels.model import MoE
from tokenjoule.kernels.runner import ModelRunner, RunnerConfig
from tokenjoule.kernels.scheduler import ScheduledBatch
from tokenjoule.kernels.sequence import Sequence, SequenceStatus
from tokenjoule.kernels.spec import ModelSpec

RESULTS: dict = {"moe_mlp": [], "engine": []}


def provenance(device: torch.device) -> dict:
    """GPU name, driver, torch/CUDA versions, date."""
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    return info


def time_ms(fn, device: torch.device, repeats: int = 20, warmup: int = 3) -> tuple[float, float]:
    """Median and spread (max - min) of `fn()` in ms: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), max(times) - min(times)


def bench_moe_mlp(spec: ModelSpec, device: torch.device, dtype: torch.dtype, token_counts: list[int]) -> None:
    """Grouped vs loop on one MoE layer over `token_counts`; same weights, same input, outputs compared."""
    moe = MoE(spec, device, dtype, backend="grouped")
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, device=device, dtype=dtype) * 0.02)
    for n in token_counts:
        x = torch.randn(n, spec.hidden_size, generator=gen, device=device, dtype=dtype)
        row = {"model": spec.name, "tokens": n,
               "expected_experts_touched": round(float(spec.expected_experts_touched(n)), 2)}
        with torch.no_grad():
            moe.backend = "grouped"
            grouped = moe(x)
            row["grouped_ms"], row["grouped_spread_ms"] = time_ms(lambda: moe(x), device)  # noqa: B023
            moe.backend = "loop"
            loop = moe(x)
            row["loop_ms"], row["loop_spread_ms"] = time_ms(lambda: moe(x), device)  # noqa: B023
        err = (grouped.float() - loop.float()).abs().max().item()
        row["max_abs_diff"] = err
        row["rel_diff"] = err / max(loop.float().abs().max().item(), 1e-30)
        row["speedup_grouped_over_loop"] = row["loop_ms"] / row["grouped_ms"]
        RESULTS["moe_mlp"].append(row)
        print(json.dumps(row), flush=True)


def new_seq(runner: ModelRunner, seq_id: int, n_tokens: int) -> Sequence:
    seq = Sequence(seq_id=seq_id, token_ids=[(seq_id * 7 + i) % 1000 for i in range(n_tokens)],
                   prompt_len=n_tokens, max_output_tokens=64, status=SequenceStatus.RUNNING)
    runner.block_manager.allocate(seq_id, 0)
    return seq


def step(runner: ModelRunner, batch: ScheduledBatch) -> None:
    bm = runner.block_manager
    for seq, n in batch.prefill:
        bm.append(seq.seq_id, seq.num_computed_tokens + n - bm.num_tokens(seq.seq_id))
    for seq in batch.decode:
        bm.append(seq.seq_id, seq.num_tokens - bm.num_tokens(seq.seq_id))
    runner.execute(batch)
    for seq, n in batch.prefill:
        seq.num_computed_tokens += n
    for seq in batch.decode:
        seq.num_computed_tokens += 1


def bench_engine(spec: ModelSpec, device: torch.device, mode: str, backend: str, prefill_shapes, decode_batches,
                 ctx: int, small: bool) -> None:
    """Prefill and decode iterations of the whole model through ModelRunner, timed on the host (sync included)."""
    t0 = time.perf_counter()
    config = RunnerConfig(mode=mode, device=str(device), moe_backend=backend, max_num_seqs=max(decode_batches),
                          max_num_batched_tokens=max(b * n for b, n in prefill_shapes), max_model_len=4096,
                          decode_backend="torch" if small else "auto", num_kv_blocks=4096 if small else None,
                          gpu_memory_utilization=0.85)
    runner = ModelRunner(spec, config)
    build_s = time.perf_counter() - t0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seq_id = 0

    def timed(batch_fn, repeats=5):
        times = []
        for _ in range(repeats):
            batch = batch_fn()
            sync()
            t = time.perf_counter()
            step(runner, batch)
            sync()
            times.append(1e3 * (time.perf_counter() - t))
        return statistics.median(times[1:] if repeats > 1 else times)  # the first may compile or capture

    for batch, n in prefill_shapes:
        made: list[int] = []

        def prefill_batch(batch=batch, n=n, made=made):
            nonlocal seq_id
            seqs = []
            for _ in range(batch):
                seq_id += 1
                seqs.append(new_seq(runner, seq_id, n))
                made.append(seq_id)
            return ScheduledBatch(prefill=tuple((s, n) for s in seqs))
        ms = timed(prefill_batch, repeats=3)
        row = {"model": spec.name, "mode": mode, "moe_backend": backend, "kind": "prefill", "batch": batch,
               "tokens": n, "median_ms": ms, "tokens_per_s": batch * n / ms * 1e3}
        RESULTS["engine"].append(row)
        print(json.dumps(row), flush=True)
        for sid in made:
            runner.block_manager.free(sid)
    for b in decode_batches:
        seqs = []
        for _ in range(b):
            seq_id += 1
            seq = new_seq(runner, seq_id, ctx)
            seq.num_computed_tokens = ctx - 1  # pretend the prompt is cached: decode attends to ctx tokens
            runner.block_manager.append(seq.seq_id, ctx - 1)
            seqs.append(seq)

        def decode_batch(seqs=seqs):
            for s in seqs:
                s.token_ids.append(1)
            return ScheduledBatch(decode=tuple(seqs))
        ms = timed(decode_batch, repeats=8)
        row = {"model": spec.name, "mode": mode, "moe_backend": backend, "kind": "decode", "batch": b,
               "context": ctx, "median_ms": ms, "tokens_per_s": b / ms * 1e3,
               "weight_bytes_read": float(spec.weight_bytes_read(b)),
               "floor_ms_at_4_8_TBps": float(spec.weight_bytes_read(b)) / 4.8e12 * 1e3}
        RESULTS["engine"].append(row)
        print(json.dumps(row), flush=True)
        for s in seqs:
            runner.block_manager.free(s.seq_id)
    RESULTS.setdefault("build_s", {})[f"{spec.name}/{mode}/{backend}"] = build_s


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="olmoe-1b-7b,mixtral-8x7b")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, to check the script")
    parser.add_argument("--budget-s", type=float, default=200.0, help="skip later models past this wall time")
    args = parser.parse_args()
    t_start = time.perf_counter()
    small = args.cpu_smoke
    device = torch.device("cpu" if small else "cuda")
    dtype = torch.float32 if small else torch.bfloat16
    RESULTS["provenance"] = provenance(device)
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "bench_moe_gpu.json")
    for name in args.models.split(","):
        if time.perf_counter() - t_start > args.budget_s:
            RESULTS.setdefault("skipped", []).append(name)
            continue
        spec = ModelSpec.from_name(name)
        if small:
            spec = dataclasses.replace(spec, n_layers=2, hidden_size=64, n_heads=4, n_kv_heads=4, head_dim=16,
                                       intermediate_size=64, moe_intermediate_size=32, vocab_size=256,
                                       shared_expert_intermediate_size=min(spec.shared_expert_intermediate_size, 64),
                                       dtype="float32")
        bench_moe_mlp(spec, device, dtype, [1, 2, 4, 8, 16, 64, 256, 1024, 4096] if not small else [1, 8, 64])
        prefill = [(1, 512), (4, 1024), (1, 4096)] if not small else [(1, 32), (2, 16)]
        decode = [1, 8, 32, 64] if not small else [1, 4]
        modes = [("cudagraph", "grouped"), ("eager", "loop")] if not small else [("eager", "grouped"),
                                                                              ("eager", "loop")]
        for mode, backend in modes:
            try:
                bench_engine(spec, device, mode, backend, prefill, decode, 1024 if not small else 64, small)
            except (RuntimeError, ValueError) as err:  # record and go on: one failure must not lose the rest
                RESULTS.setdefault("errors", []).append(f"{name}/{mode}/{backend}: {type(err).__name__}: {err}")
                print("ERROR", RESULTS["errors"][-1], flush=True)
            gc.collect()  # the runner (weights, KV cache, graphs) goes before the next one is built
            if device.type == "cuda":
                torch.cuda.empty_cache()
        RESULTS["wall_s"] = time.perf_counter() - t_start
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(RESULTS, indent=1))  # after each model: a timeout keeps what was measured
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
