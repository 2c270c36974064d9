"""`calibrate()`: the sweep on one engine, the fit (or a short re-calibration), and the profile file.

The steps live in their own modules: `measure/machine.py` (what the machine is), `sweep/` (the measurements),
`fit_sweep.py` (rows -> curves -> profile), `recalibrate.py` (carry a profile with a short sweep). torch and the
engine are imported only inside `calibrate()`, when it has to build a runner.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from tokenjoule.calibrate.fit_sweep import build_profile, tokenjoule_split_rule
from tokenjoule.calibrate.measure.aligned import METHOD_SUMMARY
from tokenjoule.calibrate.measure.machine import gpu_info, host_info, software_info
from tokenjoule.calibrate.measure.meters import EnergyMeter, NVMLMeter, make_meter
from tokenjoule.calibrate.measure.nvml import MeterError
from tokenjoule.calibrate.profile import GPUProfile, HostOverhead, save_profile
from tokenjoule.calibrate.recalibrate import check_base, recalibrated_profile
from tokenjoule.calibrate.sweep.generate import GenerateGrid, GenerateRunner, run_generate_sweep
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.sweep.host_cost import (
    binned_points,
    fit_host_overhead,
    measure_serving_host,
    synthetic_requests,
)
from tokenjoule.calibrate.sweep.iterations import IterationRunner, run_sweep
from tokenjoule.calibrate.validate.replay import PrefillFirstScheduler
from tokenjoule.kernels.scheduler import Scheduler
from tokenjoule.kernels.spec import ModelSpec

logger = logging.getLogger(__name__)

RUNNER_MODULE = "tokenjoule.kernels.iteration"
TIME_METHOD = ("host perf_counter around back-to-back IterationRunner.step() calls, each synchronized at its end "
               "(serving-loop latency: host scheduling and launch overhead included)")
GENERATE_TIME_METHOD = ("generate()-based: host perf_counter around whole Hugging Face generate() calls, each "
                        "synchronized at its end (GenerateGrid); per (batch, prompt) the prefill point costs "
                        "generate(max_new_tokens=1) and each decode step (generate(1 + N) - generate(1)) / N "
                        "(rows derived from the raw generate rows, see calibrate/sweep/generate.py)")

def serving_host_overhead(runner: IterationRunner, spec: ModelSpec, config: CalibrationConfig) -> HostOverhead | None:
    """The host-overhead model from synthetic requests served under both policies (None without a model runner).

    Each policy serves 1.5x as many requests as it has seats, all arriving at once, so batches fill up to the
    sequence limit and drain: the host time is measured across the batch sizes serving meets, on the engine's loop.
    """
    model_runner = getattr(runner, "runner", None)
    if model_runner is None or not hasattr(model_runner, "block_manager"):
        logger.warning("%s has no model runner: host overhead not measured", type(runner).__name__)
        return None
    if len(config.gpu_indices) > 1:  # the other ranks step only through the runner's commands; serving here would hang
        logger.warning("host overhead is not measured under tensor parallelism (tp=%d)", len(config.gpu_indices))
        return None
    runner.release()
    seqs = min(256, config.max_num_seqs)
    rows = []
    for scheduler in (PrefillFirstScheduler(model_runner.block_manager, seqs, min(8192, config.max_num_batched_tokens)),
                      Scheduler(model_runner.block_manager, seqs, min(2048, config.max_num_batched_tokens))):
        rows += measure_serving_host(model_runner, scheduler, synthetic_requests(seqs + seqs // 2, config.seed),
                                     spec.vocab_size, config.seed)
    return fit_host_overhead(binned_points(rows))


def resolve_build_runner() -> Callable[..., IterationRunner]:
    """The engine's `build_runner` (imports torch); RuntimeError when torch or the engine is missing."""
    try:
        module = importlib.import_module(RUNNER_MODULE)
    except ImportError as err:
        raise RuntimeError(f"cannot import {RUNNER_MODULE} ({err}); calibration needs torch "
                           "(pip install 'tokenjoule[calibrate]')") from err
    return module.build_runner


@dataclasses.dataclass(frozen=True, slots=True)
class CalibrationConfig:
    """How to calibrate one (model, engine, mode) on some GPUs.

    Attributes:
        engine: "tokenjoule" or "hf".
        mode: "eager", "cudagraph" or "compile".
        gpu_indices: GPUs of the replica (tp = their number).
        grid: the sweep grid.
        gpu_memory_utilization: engine memory fraction.
        max_num_seqs: engine sequence limit per iteration.
        max_num_batched_tokens: engine token budget per iteration.
        seed: weight seed.
        device: torch device of the engine ("cuda"; "cpu" only for smoke tests of the pipeline).
    """

    engine: str = "tokenjoule"
    mode: str = "cudagraph"
    gpu_indices: tuple[int, ...] = (0,)
    grid: GridConfig = dataclasses.field(default_factory=GridConfig)
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 512
    max_num_batched_tokens: int = 16384
    seed: int = 0
    device: str = "cuda"


def calibrate(spec: ModelSpec, config: CalibrationConfig, out_path: str | Path, *,
              runner: IterationRunner | None = None, meter: EnergyMeter | None = None,
              wait: Callable[[float], None] | None = None, progress: bool = True,
              base: GPUProfile | None = None, base_rows: Sequence[dict[str, Any]] = ()) -> GPUProfile:
    """Measure, fit and save a profile to `out_path`; the raw sweep goes beside it as `<stem>.raw.parquet`.

    With `base` (a profile of the same model, engine, mode and TP from another machine of this GPU type), the sweep
    is `config.grid` (use `recalibrate.SHORT_GRID`) and the saved profile is `base` re-scaled to this machine
    (`recalibrate.short_recalibration`) instead of a new fit.

    Args:
        spec: the model.
        config: engine, mode, GPUs, grid.
        out_path: profile JSON path.
        runner: an already built runner (tests); built with the engine's `build_runner` when None.
        meter: an energy meter (tests); `make_meter(config.gpu_indices)` when None.
        wait: sleep function for the idle window (tests pass a fake timeline's `idle`).
        progress: show a progress bar on stderr.
        base: a profile to carry here by a short re-calibration instead of fitting (see above).
        base_rows: `base`'s raw rows (`recalibrate.base_rows`): the scales are taken against them.

    Returns:
        The saved GPUProfile. Raises MeterError when energy cannot be measured.
    """
    out_path = Path(out_path)
    raw_path = out_path.with_name(out_path.stem + ".raw.parquet")
    if base is not None:
        check_base(base, spec, config.engine, config.mode, len(config.gpu_indices))
    own_meter, own_runner = meter is None, runner is None
    meter = meter if meter is not None else make_meter(config.gpu_indices)
    try:
        if not meter.has_energy:
            raise MeterError(f"cannot calibrate without an energy counter: {getattr(meter, 'reason', meter.method)}")
        if runner is None:
            runner = resolve_build_runner()(spec, engine=config.engine, mode=config.mode, device=config.device,
                                            gpu_memory_utilization=config.gpu_memory_utilization,
                                            max_num_seqs=config.max_num_seqs,
                                            max_num_batched_tokens=config.max_num_batched_tokens, seed=config.seed)
        try:
            rows = _sweep(runner, meter, config, raw_path, wait, progress)
            kv_capacity = int(runner.kv_capacity_tokens)
            # this engine's serving loop schedules on the host between iterations (generate() times its own loop)
            host_overhead = serving_host_overhead(runner, spec, config) if config.engine == "tokenjoule" else None
        finally:
            if own_runner:
                runner.release()
        rule = tokenjoule_split_rule(spec, len(config.gpu_indices)) if config.engine == "tokenjoule" else None
        if base is not None:
            profile = recalibrated_profile(base, rows, host_overhead, gpu=gpu_info(meter),
                                           method=_method(meter, config), raw_file=raw_path.name,
                                           kv_capacity_tokens=kv_capacity, base_rows=base_rows)
        else:
            profile = build_profile(rows, spec=spec, engine=config.engine, mode=config.mode, tp=len(config.gpu_indices),
                                    kv_capacity_tokens=kv_capacity, gpu=gpu_info(meter), host=host_info(),
                                    software=software_info(), method=_method(meter, config), raw_path=raw_path.name,
                                    notes=f"measured by tokenjoule calibrate; random weights (seed {config.seed})",
                                    host_overhead=host_overhead, decode_split_rule=rule)
    finally:
        if own_meter:
            meter.close()
    save_profile(profile, out_path)
    return profile


def _sweep(runner: IterationRunner, meter: EnergyMeter, config: CalibrationConfig, raw_path: Path,
           wait: Callable[[float], None] | None, progress: bool) -> list[dict[str, Any]]:
    read_temp = None
    if isinstance(meter, NVMLMeter):
        first = meter.gpu_indices[0]
        read_temp = lambda: float(meter.devices.temperature_c(first))  # noqa: E731
    sweep_kwargs = {"wait": wait} if wait is not None else {}
    if isinstance(config.grid, GenerateGrid):
        if config.engine != "hf" or not hasattr(runner, "generate"):
            raise ValueError(f"a GenerateGrid calibrates engine 'hf' through generate(); engine {config.engine!r} "
                             f"with a {type(runner).__name__} cannot run it")
        return run_generate_sweep(cast(GenerateRunner, runner), meter, config.grid, raw_path,
                                  read_temperature_c=read_temp, progress=progress, **sweep_kwargs)
    if config.engine == "hf":
        logger.warning("engine 'hf' with a plain GridConfig times single forward passes, which leave out "
                       "generate()'s per-step work; pass grid=GenerateGrid() to calibrate through generate()")
    return run_sweep(runner, meter, config.grid, raw_path, max_num_batched_tokens=config.max_num_batched_tokens,
                     max_num_seqs=config.max_num_seqs, uniform_only=config.engine == "hf",
                     read_temperature_c=read_temp, progress=progress, **sweep_kwargs)


def _method(meter: EnergyMeter, config: CalibrationConfig) -> dict[str, Any]:
    grid = json.loads(json.dumps(dataclasses.asdict(config.grid)))  # tuples -> lists, as the file holds them
    time_method = GENERATE_TIME_METHOD if isinstance(config.grid, GenerateGrid) else TIME_METHOD
    return {"time": time_method, **meter.metadata(), "aligned": METHOD_SUMMARY,
            "grid": grid, "gpu_memory_utilization": config.gpu_memory_utilization,
            "max_batch_seqs": config.max_num_seqs, "max_batched_tokens": config.max_num_batched_tokens}
