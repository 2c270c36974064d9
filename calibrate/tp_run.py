r"""Multi-process entry for tensor parallelism: TP logits check, TP calibration, and the batch-1 request benchmark.

Run one process per GPU with torchrun (NVLink multicast must stay off; `main` forces these variables as well):

    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
    torchrun --standalone --nproc-per-node 2 -m tokenjoule.calibrate.tp_run check --model llama-3.1-8b --out "$OUT"
    torchrun --standalone --nproc-per-node 2 -m tokenjoule.calibrate.tp_run calibrate --model llama-3.1-8b \\
        --runs tokenjoule:cudagraph --out "$OUT" [--quick]
    torchrun --standalone --nproc-per-node 2 -m tokenjoule.calibrate.tp_run bench --model llama-3.1-8b --out "$OUT"

`check` runs `kernels.tp_device.run_check` (TP logits against one process's). `calibrate` writes profiles named
`<gpu>x<tp>-<model>-<engine>-<mode>.json` with energy summed over the participating GPUs only. `bench` times
whole batch-1 requests (the paper's TP comparison); run it with `--nproc-per-node 1` too for the TP1 baseline.
Rank r uses GPU `--gpus[r]` (PCI bus order, the same numbering as NVML). `--cpu --world-size N` runs any command
on CPU processes over gloo instead (no torchrun; for smoke tests). This stays a `python -m` entry, not a
`tokenjoule` command, because torchrun starts one process per GPU from a module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from tokenjoule.calibrate.measure.machine import check_device, gpu_tag
from tokenjoule.calibrate.measure.meters import NVMLMeter, make_meter
from tokenjoule.calibrate.measure.sampler import PowerSampler
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.kernels.cpu_spawn import spawn_cpu
from tokenjoule.kernels.engine import Engine
from tokenjoule.kernels.iteration import TPIterationRunner, build_runner
from tokenjoule.kernels.runner import RunnerConfig
from tokenjoule.kernels.spec import ModelSpec, load_spec
from tokenjoule.kernels.tp import TPGroup, init_tp, multicast_off_env, shutdown_tp
from tokenjoule.kernels.tp_device import rank_device, run_check

logger = logging.getLogger(__name__)

# ---- (b) calibration at TP -------------------------------------------------------------------------------------------
def calibrate_tp(tp: TPGroup | None, spec: ModelSpec, engine: str, mode: str, device: str, out: Path,
                 gpu_indices: Sequence[int], quick: bool, gpu_memory_utilization: float = 0.9) -> dict | None:
    """Every rank builds its shard; rank 0 runs the calibration sweep (energy over `gpu_indices`) and saves it.

    Returns:
        On rank 0: {"profile": path, "seconds": wall time, "idle_power_w", "fit_errors"}; elsewhere None.
    """
    world = tp.world_size if tp is not None else 1
    if len(gpu_indices) != world:
        raise ValueError(f"--gpus names {len(gpu_indices)} GPUs but {world} processes run")
    runner = build_runner(spec, engine=engine, mode=mode, device=device, seed=0, tp=tp,
                          gpu_memory_utilization=gpu_memory_utilization)
    if tp is not None and not tp.is_driver:
        runner.serve()
        return None
    try:
        stem = f"{gpu_tag(gpu_indices)}-{spec.name.replace('/', '_')}-{engine}-{mode}" + ("-quick" if quick else "")
        config = CalibrationConfig(engine=engine, mode=mode, gpu_indices=tuple(gpu_indices),
                                   grid=GridConfig.quick() if quick else GridConfig(),
                                   gpu_memory_utilization=gpu_memory_utilization)
        meter = make_meter(config.gpu_indices)  # energy of the participating GPUs, summed
        sampler = PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock) if isinstance(
            meter, NVMLMeter) else None
        start = time.perf_counter()
        try:
            if sampler is not None:
                sampler.start()
            profile = calibrate(spec, config, out / f"{stem}.json", runner=runner, meter=meter, progress=False)
        finally:
            if sampler is not None:
                _write_timeline(sampler.stop(), out / f"{stem}.timeline.parquet")
            meter.close()
    finally:
        if isinstance(runner, TPIterationRunner):
            runner.close()  # lets the other ranks' serve() return, also after an error here
    return {"profile": str(out / f"{stem}.json"), "seconds": time.perf_counter() - start,
            "idle_power_w": profile.idle_power_w, "fit_errors": profile.fit_errors}


def _write_timeline(samples: list, path: Path) -> None:

    pq.write_table(pa.Table.from_pylist([s.to_row() for s in samples]), path)


# ---- (c) batch-1 requests: the paper's TP latency / energy comparison ----------------------------------------------
def bench_requests(tp: TPGroup | None, spec: ModelSpec, device: str, mode: str, gpu_indices: Sequence[int],
                   prompt_tokens: int, output_tokens: int, batch: int, repeats: int) -> dict | None:
    """Time (and meter, on rank 0) whole static batches through the Engine; every rank makes the same calls.

    Returns:
        On rank 0: per-repeat and median request latency (s) and energy (J, summed over `gpu_indices`), with
        per-GPU energy of the median repeat; elsewhere None.
    """
    engine = Engine(spec, RunnerConfig(mode=mode, device=device, max_num_seqs=max(batch, 8)), seed=0, tp=tp)
    engine.generate_static(prompt_tokens, output_tokens, batch)  # warm-up: Triton compiles, graphs captured
    driver = tp is None or tp.is_driver
    meter = None
    if driver:

        meter = make_meter(gpu_indices)
    runs = []
    try:
        for i in range(repeats):
            if tp is not None:
                dist.barrier(group=tp.control_group)  # start together: no rank's idle wait inside the window
            if meter is not None:
                meter.begin_window(f"req{i}")
            engine.generate_static(prompt_tokens, output_tokens, batch)
            if meter is not None:
                m = meter.end_window(f"req{i}")
                runs.append({"time_s": m.time_s, "energy_j": m.energy_j, "per_gpu_energy_j": m.per_gpu_energy_j})
    finally:
        if meter is not None:
            meter.close()
    if not driver:
        return None
    times = [r["time_s"] for r in runs]
    energies = [r["energy_j"] for r in runs if r["energy_j"] is not None]
    return {"tp": tp.world_size if tp is not None else 1, "mode": mode, "model": spec.name, "batch": batch,
            "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "gpus": list(gpu_indices),
            "time_s_median": statistics.median(times),
            "energy_j_median": statistics.median(energies) if energies else None, "runs": runs}


def _command(args: argparse.Namespace) -> tuple[Callable[..., Any], tuple]:
    """The function each rank runs for the command, and its arguments after `tp` (device is filled per rank)."""
    spec = load_spec(args.model)
    if args.command == "check":
        spec = dataclasses.replace(spec, n_layers=args.layers)
        return run_check, (spec, args.modes.split(","), args.gpus, args.cpu)
    if args.command == "calibrate":
        return _run_calibrate, (spec, args.runs.split(","), args.gpus, args.cpu, str(args.out), args.quick,
                                args.gpu_memory_utilization)
    return _run_bench, (spec, args.mode, args.gpus, args.cpu, args.prompt_tokens, args.output_tokens, args.batch,
                        args.repeats)


def _run_calibrate(tp, spec, runs, gpus, cpu, out, quick, utilization) -> list:
    if not cpu:  # every rank checks, so a refusal stops all of them alike
        check_device(gpus)
    results = []
    for run in runs:
        engine, mode = run.split(":")
        results.append(calibrate_tp(tp, spec, engine, mode, rank_device(tp, gpus, cpu), Path(out), gpus, quick,
                                    utilization))
        _free_memory(tp)
    return results


def _run_bench(tp, spec, mode, gpus, cpu, prompt_tokens, output_tokens, batch, repeats) -> dict | None:
    return bench_requests(tp, spec, rank_device(tp, gpus, cpu), mode, gpus, prompt_tokens, output_tokens, batch,
                          repeats)


def _free_memory(tp: TPGroup | None) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if tp is not None:
        dist.barrier(group=tp.control_group)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "calibrate", "bench"))
    parser.add_argument("--out", type=Path, default=Path("."), help="output directory")
    parser.add_argument("--model", default="llama-3.1-8b", help="registry name or a config.json path")
    parser.add_argument("--gpus", default=None, help="GPU per rank, e.g. 0,1 (default: 0..world-1)")
    parser.add_argument("--layers", type=int, default=2, help="check: layers of the model copy compared")
    parser.add_argument("--modes", default="eager,cudagraph", help="check: runner modes of the TP side")
    parser.add_argument("--runs", default="tokenjoule:cudagraph", help="calibrate: engine:mode[,engine:mode...]")
    parser.add_argument("--quick", action="store_true", help="calibrate: the quick grid")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--mode", default="cudagraph", help="bench: runner mode")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpu", action="store_true", help="run on CPU processes over gloo (no torchrun)")
    parser.add_argument("--world-size", type=int, default=2, help="with --cpu: how many processes")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command on this rank (or spawn CPU ranks with --cpu); rank 0 writes `<command>_tp<N>.json`."""
    multicast_off_env()
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA numbering = NVML numbering
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    world = args.world_size if args.cpu else int(os.environ.get("WORLD_SIZE", "1"))
    args.gpus = tuple(int(i) for i in args.gpus.split(",")) if args.gpus else tuple(range(world))
    if args.command == "check" and args.cpu:
        args.modes = "eager"
    fn, fn_args = _command(args)
    if args.cpu:
        result = spawn_cpu(fn, world, fn_args, timeout_s=600.0)
        rank0 = True
    else:
        tp = init_tp(local_rank=args.gpus[int(os.environ.get("LOCAL_RANK", "0"))]) if world > 1 else None
        if tp is None and args.command == "check":
            print("error: check needs 2 or more processes (torchrun --nproc-per-node N)", file=sys.stderr)
            return 2
        try:
            result = fn(tp, *fn_args)
        finally:
            shutdown_tp()
        rank0 = tp is None or tp.is_driver
    if rank0:
        path = args.out / f"{args.command}_tp{world}.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        print(json.dumps(result, default=str), flush=True)
        if args.command == "check" and not all(result[m]["passed"] for m in args.modes.split(",")):
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
