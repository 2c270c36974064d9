r"""One-command GPU calibration: profiles + raw Parquet + power timeline + log into a directory.

    python3 -m tokenjoule.calibrate.run_device --out "$OUT" --model llama-3.1-8b \\
        --runs tokenjoule:eager,tokenjoule:cudagraph,hf:eager [--quick]

Each run writes `<gpu>_<model>_<engine>_<mode>.json` (profile), `.raw.parquet` (sweep rows, resumable: copy it
back beside the profile path to continue an interrupted sweep) and `.timeline.parquet` (instantaneous power,
temperature and SM clock every 100 ms); `calibrate.log` collects the log of all runs. Engine "hf" is calibrated
through `generate()` itself (`generate_sweep.py`), and in the same lease one generate(4, 1,024 in, 128 out) run is
measured into `<gpu>-<model>-hf-generate-check.json` beside the profile's prediction of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.calibrate.calibration import (
    CalibrationConfig,
    calibrate,
    datasheet_name,
    gpu_info,
    host_info,
    resolve_build_runner,
    software_info,
)
from tokenjoule.calibrate.sweep.generate import GenerateGrid, GenerateRunner, measure_generate_run
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.measure.meters import EnergyMeter, NVMLMeter, make_meter
from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.recalibrate import SHORT_GRID
from tokenjoule.calibrate.measure.sampler import PowerSampler
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.traces.files import write_atomic

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
                    max_num_seqs: int = 512, max_num_batched_tokens: int = 16384, timeline_path: Path | None = None,
                    check_path: Path | None = None, progress: bool = True,
                    base: GPUProfile | None = None) -> GPUProfile:
    """Calibrate one (model, engine, mode) on real GPUs and save the profile at `out`.

    With `base`, a short re-calibration: the few points of `recalibrate.SHORT_GRID`, and `base` re-scaled to them.

    Engine "hf" is calibrated through generate() (a GenerateGrid); with `check_path`, one generate(4, 1024, 128)
    run is then measured on the same model and written there with the profile's prediction of it.
    """
    hf = engine == "hf"
    grid_cls = GenerateGrid if hf else GridConfig
    if base is not None and (quick or hf):
        raise ValueError("--short-from re-scales a tokenjoule-engine profile from its own short grid; it takes neither "
                         "--quick nor engine hf")
    grid = SHORT_GRID if base is not None else grid_cls.quick() if quick else grid_cls()
    config = CalibrationConfig(engine=engine, mode=mode, gpu_indices=tuple(gpu_indices), grid=grid,
                               gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                               max_num_batched_tokens=max_num_batched_tokens)
    meter = make_meter(config.gpu_indices)
    sampler = PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock) if (
        timeline_path is not None and isinstance(meter, NVMLMeter)) else None
    runner = None
    try:
        if sampler is not None:
            sampler.start()
        spec = load_spec(model)
        if hf and check_path is not None:  # built here, not inside calibrate(), so the check reuses the model
            runner = resolve_build_runner()(spec, engine=engine, mode=mode, device=config.device,
                                            gpu_memory_utilization=gpu_memory_utilization, seed=config.seed)
        profile = calibrate(spec, config, out, meter=meter, progress=progress, runner=runner, base=base)
        if runner is not None and check_path is not None:
            check = generate_check(runner, meter, profile, Path(out).name)
            write_atomic(check_path, lambda tmp: Path(tmp).write_text(json.dumps(check, indent=2) + "\n"))
            print(check_line(check), flush=True)
        return profile
    finally:
        if runner is not None:
            runner.release()
        runner = None  # drop the model before `_free_gpu_memory` collects
        if sampler is not None:
            rows = [s.to_row() for s in sampler.stop()]
            pq.write_table(pa.Table.from_pylist(rows), timeline_path)
        meter.close()
        _free_gpu_memory()


CHECK_RUN = (4, 1024, 128)  # batch, prompt tokens, new tokens: the run issue 4 asks the HF profile to predict


def _provenance(meter: EnergyMeter) -> dict[str, Any]:
    """The keys of the shipped H100 check's provenance block, from the calibration's own metadata helpers."""
    gpu, host, software = gpu_info(meter), host_info(), software_info()
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gpu": gpu.get("name"),
            "torch": software["torch"], "cuda": software["cuda"], "python": software["python"],
            "host_cpu": host["cpu_model"], "triton": software["triton"], "transformers": software["transformers"],
            "driver": gpu.get("driver"), "power_limit_w": gpu.get("power_limit_w"),
            "sm_clock_max_mhz": gpu.get("max_sm_clock_mhz"), "git_sha": software.get("git_sha")}


def generate_check(runner: GenerateRunner, meter: EnergyMeter, profile: GPUProfile, profile_name: str,
                   run: tuple[int, int, int] = CHECK_RUN, repeats: int = 3,
                   wait: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Measure generate(batch, prompt, new) `repeats` times (one call per window, from a counter tick; median kept).

    Returns:
        The check file's content: provenance, the median time and energy under the shipped check's keys, every
        repeat, and the profile's prediction of the same run (labelled modeled) with its relative errors.
    """
    batch, prompt, new = run
    ms = measure_generate_run(runner, meter, batch, prompt, new, repeats, wait)
    energies = [m.energy_per_step_j for m in ms]
    time_s = statistics.median(m.step_time_s for m in ms)
    energy_j = None if None in energies else statistics.median(e for e in energies if e is not None)
    pred = static_batch_cost(profile, batch, prompt, new)
    key = f"hf_generate_b{batch}_{prompt}in_{new}out"
    return {
        "provenance": _provenance(meter),
        f"{key}_s": time_s, f"{key}_j": energy_j,
        "hf_generate_j_per_output_token": None if energy_j is None else energy_j / (batch * new),
        "method": "median of windows of one whole generate() call each, started at an energy-counter tick "
                  "(calibrate.aligned.measure_from_tick), after a warm-up call; same model and lease as the "
                  "profile",
        "repeats": [{"time_s": m.step_time_s, "energy_j": m.energy_per_step_j, "power_w": m.power_w,
                     "error_bound": m.error_bound, "tick_span_s": m.tick_span_s} for m in ms],
        "modeled_prediction": {
            "source": f"{profile_name}: calibrate.summary.static_batch_cost (modeled, not measured)",
            "time_s": pred["time_s"], "energy_j": pred["energy_j"],
            "time_error": (pred["time_s"] - time_s) / time_s,
            "energy_error": None if not energy_j else (pred["energy_j"] - energy_j) / energy_j},
    }


def check_line(check: dict[str, Any]) -> str:
    """One printed line: the measured run, the profile's prediction, the relative errors."""
    key = next(k for k in check if k.startswith("hf_generate_b") and k.endswith("_s"))
    measured_s, measured_j, pred = check[key], check[key[:-2] + "_j"], check["modeled_prediction"]
    energy = "no energy" if measured_j is None else f"{measured_j:.0f} J"
    err = "-" if pred["energy_error"] is None else f"{pred['energy_error']:+.1%}"
    return (f"{key[3:-2]}: measured {energy}, {measured_s:.2f} s; profile predicts {pred['energy_j']:.0f} J "
            f"({err}), {pred['time_s']:.2f} s ({pred['time_error']:+.1%})")


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
        check = args.out / f"{tag}-{model}-hf-generate-check.json" if engine == "hf" else None
        profile = run_calibration(args.model, engine, mode, args.out / f"{stem}.json", quick=args.quick,
                                  gpu_indices=indices, gpu_memory_utilization=args.gpu_memory_utilization,
                                  timeline_path=args.out / f"{stem}.timeline.parquet", check_path=check,
                                  progress=False)
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
