r"""One-command GPU calibration: profiles + raw Parquet + power timeline + log into a directory.

    python3 -m tokenjoule.calibrate.run_device --out "$OUT" --model llama-3.1-8b \\
        --runs tokenjoule:eager,tokenjoule:cudagraph,hf:eager [--quick]

Each run writes `<gpu>_<model>_<engine>_<mode>.json` (profile), `.raw.parquet` (sweep rows, resumable: copy it
back beside the profile path to continue an interrupted sweep) and `.timeline.parquet` (instantaneous power,
temperature and SM clock every 100 ms); `calibrate.log` collects the log of all runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.calibrate.calibration import CalibrationConfig, calibrate, datasheet_name
from tokenjoule.calibrate.grid import GridConfig
from tokenjoule.calibrate.meters import NVMLMeter, make_meter
from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.sampler import PowerSampler
from tokenjoule.kernels.spec import ModelSpec

logger = logging.getLogger(__name__)


def check_device(gpu_indices: Sequence[int]) -> None:
    """RuntimeError (one line, saying why) unless torch sees CUDA and NVML reads the GPUs' energy counters."""
    try:
        import torch
    except ImportError as err:
        raise RuntimeError("calibrate needs torch with CUDA (pip install 'tokenjoule[calibrate]')") from err
    if not torch.cuda.is_available():
        raise RuntimeError("calibrate needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
    meter = make_meter(gpu_indices)
    try:
        if not meter.has_energy:
            raise RuntimeError(f"calibrate needs NVML's energy counter: {getattr(meter, 'reason', 'unavailable')}")
    finally:
        meter.close()


def load_spec(model: str) -> ModelSpec:
    """A registry name, or the path of a Hugging Face config.json."""
    path = Path(model)
    return ModelSpec.from_hf_config(path, name=path.parent.name or None) if path.is_file() else ModelSpec.from_name(
        model)


def run_calibration(model: str, engine: str, mode: str, out: str | Path, *, quick: bool = False,
                    gpu_indices: Sequence[int] = (0,), gpu_memory_utilization: float = 0.9,
                    max_batch_seqs: int = 512, max_batched_tokens: int = 16384, timeline_path: Path | None = None,
                    progress: bool = True) -> GPUProfile:
    """Calibrate one (model, engine, mode) on real GPUs and save the profile at `out`."""
    config = CalibrationConfig(engine=engine, mode=mode, gpu_indices=tuple(gpu_indices),
                               grid=GridConfig.quick() if quick else GridConfig(),
                               gpu_memory_utilization=gpu_memory_utilization, max_batch_seqs=max_batch_seqs,
                               max_batched_tokens=max_batched_tokens)
    meter = make_meter(config.gpu_indices)
    sampler = PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock) if (
        timeline_path is not None and isinstance(meter, NVMLMeter)) else None
    try:
        if sampler is not None:
            sampler.start()
        return calibrate(load_spec(model), config, out, meter=meter, progress=progress)
    finally:
        if sampler is not None:
            rows = [s.to_row() for s in sampler.stop()]
            pq.write_table(pa.Table.from_pylist(rows), timeline_path)
        meter.close()
        _free_gpu_memory()


def _free_gpu_memory() -> None:
    """Return the finished engine's cached memory, so the next run's KV sizing sees the whole GPU again."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def gpu_tag(gpu_indices: Sequence[int]) -> str:
    """Short file-name tag of the GPUs measured: 'h100', or 'h100x2' for two."""
    meter = make_meter(gpu_indices)
    try:
        name = meter.devices.describe(gpu_indices[0])["name"] if isinstance(meter, NVMLMeter) else None
    finally:
        meter.close()
    key = datasheet_name(name)
    tag = key.split("-")[0].lower() if key else "gpu"
    return tag if len(gpu_indices) == 1 else f"{tag}x{len(gpu_indices)}"


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run each requested calibration, report one line per profile; exit 2 on refusal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--runs", default="tokenjoule:cudagraph", help="engine:mode[,engine:mode...]")
    parser.add_argument("--gpus", default="0")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(args.out / "calibrate.log"), logging.StreamHandler()])
    indices = tuple(int(i) for i in args.gpus.split(","))
    try:
        check_device(indices)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tag, model = gpu_tag(indices), load_spec(args.model).name.replace("/", "_")
    for run in args.runs.split(","):
        engine, mode = run.split(":")
        # the shipped-profile naming: h100-llama-3.1-8b-tokenjoule-cudagraph
        stem = f"{tag}-{model}-{engine}-{mode}" + ("-quick" if args.quick else "")
        start = time.perf_counter()
        profile = run_calibration(args.model, engine, mode, args.out / f"{stem}.json", quick=args.quick,
                                  gpu_indices=indices, gpu_memory_utilization=args.gpu_memory_utilization,
                                  timeline_path=args.out / f"{stem}.timeline.parquet", progress=False)
        errs = profile.fit_errors
        bound = errs["repeats"]["energy_error_bound_max"]
        print(f"{stem}: {time.perf_counter() - start:.0f} s, worst point bound {bound:.2%}, repeat spread median "
              f"{errs['repeats']['time_spread_median']:.2%}, idle {profile.idle_power_w:.0f} W, latency CV "
              f"median {errs['latency']['cv_median']:.2%} p95 {errs['latency']['cv_p95']:.2%}, energy CV median "
              f"{errs['energy']['cv_median']:.2%} p95 {errs['energy']['cv_p95']:.2%}, mixed latency/energy median "
              f"{errs['latency']['mixed_median']} / {errs['energy']['mixed_median']}", flush=True)
        logger.info("run %s done: %s", stem, dataclasses.asdict(profile.latency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
