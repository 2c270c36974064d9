"""Calibrating on real GPUs: one profile with its power timeline, a folder of runs, and the HF generate() check.

`tokenjoule calibrate` calls `run_calibration` (one profile) or `calibrate_runs` (a folder: one profile per
engine:mode, named as the shipped ones, `<gpu>-<model>-<engine>-<mode>.json`, each with its `.raw.parquet` and its
`.timeline.parquet` of instantaneous power, temperature and SM clock every 100 ms). Engine "hf" is calibrated through
`generate()` itself (`sweep/generate.py`), and in the same lease one generate(4, 1,024 in, 128 out) run is measured
into `<gpu>-<model>-hf-generate-check.json` beside the profile's prediction of it. `calibrate_tp` is the same
calibration with its model sharded over tensor-parallel ranks (`tp_run.py`, under torchrun).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.calibrate.measure.machine import gpu_info, gpu_tag, host_info, software_info
from tokenjoule.calibrate.measure.meters import EnergyMeter, NVMLMeter, make_meter
from tokenjoule.calibrate.measure.sampler import PowerSampler
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate, resolve_build_runner
from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.calibrate.recalibrate import SHORT_GENERATE_GRID, SHORT_GRID
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.calibrate.sweep.generate import GenerateGrid, GenerateRunner, measure_generate_run
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.kernels.spec import ConfigError, load_spec
from tokenjoule.traces.files import write_atomic

logger = logging.getLogger(__name__)


def run_calibration(model: str, engine: str, mode: str, out: str | Path, *, quick: bool = False,
                    gpu_indices: Sequence[int] = (0,), gpu_memory_utilization: float = 0.9,
                    max_num_seqs: int = 512, max_num_batched_tokens: int = 16384, timeline_path: Path | None = None,
                    check_path: Path | None = None, progress: bool = True,
                    base: GPUProfile | None = None, base_rows: Sequence[dict[str, Any]] = ()) -> GPUProfile:
    """Calibrate one (model, engine, mode) on real GPUs and save the profile at `out`.

    With `base`, a short re-calibration: the few points of `recalibrate.SHORT_GRID` (engine "hf":
    `SHORT_GENERATE_GRID`, the host check), and `base` re-scaled to them (against `base_rows`, its raw rows, where
    given).

    Engine "hf" is calibrated through generate() (a GenerateGrid); with `check_path`, one generate(4, 1024, 128)
    run is then measured on the same model and written there with the profile's prediction of it.
    """
    hf = engine == "hf"
    grid_cls = GenerateGrid if hf else GridConfig
    if base is not None and quick:
        raise ConfigError("--short-from re-scales a profile from its own short grid; it does not take --quick")
    short = SHORT_GENERATE_GRID if hf else SHORT_GRID
    grid = short if base is not None else grid_cls.quick() if quick else grid_cls()
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
        profile = calibrate(spec, config, out, meter=meter, progress=progress, runner=runner, base=base,
                            base_rows=base_rows)
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


def parse_runs(runs: str) -> list[tuple[str, str]]:
    """`"tokenjoule:eager,hf:eager"` -> [("tokenjoule", "eager"), ("hf", "eager")]; ConfigError naming a bad entry."""
    pairs = []
    for run in runs.split(","):
        engine, sep, mode = run.partition(":")
        if not sep or not engine or not mode:
            raise ConfigError(f"--runs: {run!r} is not engine:mode (e.g. tokenjoule:cudagraph,hf:eager)")
        pairs.append((engine, mode))
    return pairs


def calibrate_runs(out_dir: Path, model: str, runs: Sequence[tuple[str, str]], gpu_indices: Sequence[int], *,
                   quick: bool = False, gpu_memory_utilization: float = 0.9) -> Iterator[str]:
    """Calibrate each (engine, mode) into `out_dir` under the shipped naming; yield one summary line per profile."""
    tag, name = gpu_tag(gpu_indices), load_spec(model).name.replace("/", "_")
    for engine, mode in runs:
        # the shipped-profile naming: h100-llama-3.1-8b-tokenjoule-cudagraph
        stem = f"{tag}-{name}-{engine}-{mode}" + ("-quick" if quick else "")
        start = time.perf_counter()
        check = out_dir / f"{tag}-{name}-hf-generate-check.json" if engine == "hf" else None
        profile = run_calibration(model, engine, mode, out_dir / f"{stem}.json", quick=quick, gpu_indices=gpu_indices,
                                  gpu_memory_utilization=gpu_memory_utilization,
                                  timeline_path=out_dir / f"{stem}.timeline.parquet", check_path=check,
                                  progress=False)
        logger.info("run %s done: %s", stem, dataclasses.asdict(profile.latency))
        yield f"{stem}: {time.perf_counter() - start:.0f} s, {fit_line(profile)}"


def fit_line(profile: GPUProfile) -> str:
    """The profile's measurement quality in one line: worst energy bound, repeat spread, idle power, fit errors."""
    errs = profile.fit_errors
    return (f"worst point bound {errs['repeats']['energy_error_bound_max']:.2%}, repeat spread median "
            f"{errs['repeats']['time_spread_median']:.2%}, idle {profile.idle_power_w:.0f} W, latency CV "
            f"median {errs['latency']['cv_median']:.2%} p95 {errs['latency']['cv_p95']:.2%}, energy CV median "
            f"{errs['energy']['cv_median']:.2%} p95 {errs['energy']['cv_p95']:.2%}, mixed latency/energy median "
            f"{errs['latency']['mixed_median']} / {errs['energy']['mixed_median']}")
