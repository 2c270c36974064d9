"""`calibrate()`: metadata capture, the sweep, the fit, and the profile file (raw Parquet beside it).

torch and the engine are imported only inside `calibrate()`; fitting and metadata work without them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import platform
import statistics
import subprocess
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import numpy as np

from tokenjoule.calibrate.measure.aligned import METHOD_SUMMARY
from tokenjoule.calibrate.fit import choose_knots, fit_curve
from tokenjoule.calibrate.sweep.generate_rows import derive_fit_rows
from tokenjoule.calibrate.sweep.generate import GenerateGrid, GenerateRunner, run_generate_sweep
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.sweep.host_cost import binned_points, fit_host_overhead, measure_serving_host, synthetic_requests
from tokenjoule.calibrate.measure.meters import EnergyMeter, MeterError, NVMLMeter, make_meter, mw_to_w
from tokenjoule.calibrate.profile import (
    FEATURES,
    REGIME,
    DecodeSplitRule,
    GPUProfile,
    HostOverhead,
    save_profile,
    shape_features,
)
from tokenjoule.calibrate.recalibrate import short_recalibration
from tokenjoule.calibrate.validate.replay import PrefillFirstScheduler
from tokenjoule.calibrate.sweep.iterations import IterationRunner, run_sweep, shape_from_row
from tokenjoule.kernels.scheduler import Scheduler
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.shape import MAX_SPLITS, TARGET_PROGRAMS

logger = logging.getLogger(__name__)

RUNNER_MODULE = "tokenjoule.kernels.iteration"
TIME_METHOD = ("host perf_counter around back-to-back IterationRunner.step() calls, each synchronized at its end "
               "(serving-loop latency: host scheduling and launch overhead included)")
GENERATE_TIME_METHOD = ("generate()-based: host perf_counter around whole Hugging Face generate() calls, each "
                        "synchronized at its end (GenerateGrid); per (batch, prompt) the prefill point costs "
                        "generate(max_new_tokens=1) and each decode step (generate(1 + N) - generate(1)) / N "
                        "(rows derived from the raw generate rows, see calibrate/sweep/generate.py)")


def datasheet_name(gpu_name: str | None) -> str | None:
    """DATASHEETS key for an NVML GPU name ("NVIDIA H100 80GB HBM3" -> "H100-SXM"), or None if unknown."""
    name = (gpu_name or "").upper()
    for marker, key in (("H100", "H100-SXM"), ("H200", "H200-SXM"), ("A100", "A100-SXM-80GB")):
        if marker in name:
            return key
    return None


def host_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Host CPU model (from /proc/cpuinfo) and logical core count."""
    model = platform.processor() or None
    try:
        for line in Path(cpuinfo_path).read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cores": os.cpu_count(), "platform": platform.platform()}


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def software_info() -> dict[str, Any]:
    """Versions that shape the measurement: tokenjoule, torch, CUDA, transformers, triton, pynvml, git sha."""
    info: dict[str, Any] = {"tokenjoule": _pkg_version("tokenjoule"), "python": platform.python_version(),
                            "torch": _pkg_version("torch"), "cuda": None,
                            "transformers": _pkg_version("transformers"), "triton": _pkg_version("triton"),
                            "nvidia-ml-py": _pkg_version("nvidia-ml-py")}
    try:
        import torch

        info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        info["git_sha"] = sha or None
    except (OSError, subprocess.SubprocessError):
        info["git_sha"] = None
    return info


def gpu_info(meter: EnergyMeter) -> dict[str, Any]:
    """Name, driver, power limit, clocks, memory of the metered GPUs (first GPU's values; per-GPU list too)."""
    if not isinstance(meter, NVMLMeter):
        return {"name": None, "count": len(meter.gpu_indices), "datasheet": None}
    per_gpu = []
    for i in meter.gpu_indices:
        raw = meter.devices.describe(i)
        limit_mw = raw.pop("power_limit_mw")
        per_gpu.append({**raw, "power_limit_w": None if limit_mw is None else mw_to_w(limit_mw)})
    first = per_gpu[0]
    info = {key: first[key] for key in ("name", "memory_bytes", "power_limit_w", "max_sm_clock_mhz",
                                        "max_mem_clock_mhz", "sm_clock_mhz")}
    info.update(driver=meter.devices.driver_version(), count=len(per_gpu), devices=per_gpu,
                datasheet=datasheet_name(first["name"]))
    return info


def gpu_uuids(gpu: dict[str, Any]) -> tuple[str | None, ...]:
    """The UUIDs of the GPUs `gpu_info` described (None where it could not read one)."""
    return tuple(d.get("uuid") for d in gpu.get("devices") or [{}])


def aggregate_points(rows: Sequence[dict[str, Any]], kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """One record per ok point of `kinds`: median latency and energy over repeats, and their relative spread."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and row["kind"] in kinds:
            groups[row["point_id"]].append(row)
    out = []
    for point_id, group in groups.items():
        times = [r["step_time_s"] for r in group]
        energies = [r["energy_per_step_j"] for r in group if r["energy_per_step_j"] is not None]
        t_med = statistics.median(times)
        e_med = statistics.median(energies) if energies else None
        out.append({"point_id": point_id, "kind": group[0]["kind"], "shape": shape_from_row(group[0]),
                    "time_s": t_med, "energy_j": e_med, "time_spread": (max(times) - min(times)) / t_med,
                    "energy_spread": (max(energies) - min(energies)) / e_med if e_med else None})
    return out


def _columns(points: list[dict[str, Any]], key: str,
             rule: DecodeSplitRule | None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    feats = [shape_features(p["shape"], rule) for p in points]
    x = np.array([p["shape"].new_tokens for p in points], dtype=np.float64)
    names = (*FEATURES, REGIME)
    if not any(p["shape"].ragged_decode for p in points):
        # only ragged batches tell the longest context from the summed one; a grid without them leaves it unfitted
        names = tuple(n for n in names if n != "decode_tail_ctx_tokens")
    return x, {f: np.array([d[f] for d in feats]) for f in names}, np.array([p[key] for p in points], float)


def fit_rows(rows: Sequence[dict[str, Any]], folds: int = 5, rule: DecodeSplitRule | None = None) -> dict[str, Any]:
    """Fit latency and energy curves to raw sweep rows (prefill, decode and mixed points alike).

    `rule` is the engine's decode split rule, which prices the longest decode context (see `DecodeSplitRule`).

    Returns:
        {"latency": CostCurve, "energy": CostCurve, "fit_errors": {...}, "idle_power_w": float}.
    """
    rows = derive_fit_rows(rows)  # raw generate() rows -> the prefill/decode rows they imply; other rows as they are
    fit_points = aggregate_points(rows, ("prefill", "decode", "mixed"))
    if len(fit_points) < 4:
        raise ValueError(f"only {len(fit_points)} measured points; a fit needs >= 4")
    if any(p["energy_j"] is None for p in fit_points):
        raise ValueError("some points lack energy (no energy counter?); a profile needs energy for every point")
    decode_x = [p["shape"].new_tokens for p in fit_points if not p["shape"].prefill]
    prefill_x = [p["shape"].new_tokens for p in fit_points if p["shape"].prefill]
    # One curve per regime (decode-only, with prefill) when both were measured; see calibrate/profile.py.
    two_regimes = len(decode_x) >= 2 and len(prefill_x) >= 2
    knots = choose_knots(decode_x if two_regimes else decode_x + prefill_x)
    prefill_knots = choose_knots(prefill_x) if two_regimes else ()
    is_mixed = [p["kind"] == "mixed" for p in fit_points]
    out: dict[str, Any] = {"fit_errors": {}}
    for name, key, unit in (("latency", "time_s", "s"), ("energy", "energy_j", "J")):
        x, feats, y = _columns(fit_points, key, rule)
        curve, stats = fit_curve(x, feats, y, knots, unit, folds=folds, mixed_mask=is_mixed,
                                 prefill_knots=prefill_knots)
        out[name] = curve
        out["fit_errors"][name] = stats.to_dict()
    spreads = [p["time_spread"] for p in fit_points]
    e_spreads = [p["energy_spread"] for p in fit_points if p["energy_spread"] is not None]
    bounds = [r["error_bound"] for r in rows if r["status"] == "ok" and r["error_bound"] is not None]
    out["fit_errors"]["repeats"] = {"time_spread_median": float(np.median(spreads)),
                                    "energy_spread_median": float(np.median(e_spreads)) if e_spreads else None,
                                    "energy_error_bound_max": float(max(bounds)) if bounds else None}
    out["idle_power_w"] = idle_power(rows)
    return out


def idle_power(rows: Sequence[dict[str, Any]]) -> float:
    """Median idle power (W) of a sweep's idle windows; ValueError when it has none."""
    idle = [r["power_w"] for r in rows if r["kind"] == "idle" and r["power_w"] is not None]
    if not idle:
        raise ValueError("the sweep has no idle-power measurement")
    return float(statistics.median(idle))


def build_profile(rows: Sequence[dict[str, Any]], *, spec: ModelSpec, engine: str, mode: str, tp: int,
                  kv_capacity_tokens: int, gpu: dict[str, Any], host: dict[str, Any], software: dict[str, Any],
                  method: dict[str, Any], raw_path: str | None, notes: str = "", folds: int = 5,
                  host_overhead: HostOverhead | None = None,
                  decode_split_rule: DecodeSplitRule | None = None) -> GPUProfile:
    """Fit the rows and assemble the GPUProfile (dated now, UTC)."""
    fitted = fit_rows(rows, folds=folds, rule=decode_split_rule)
    return GPUProfile(gpu=gpu, host=host, software=software, method=method,
                      date=datetime.now(timezone.utc).isoformat(timespec="seconds"), engine=engine, mode=mode,
                      model=spec, tp=tp, idle_power_w=fitted["idle_power_w"], kv_capacity_tokens=kv_capacity_tokens,
                      latency=fitted["latency"], energy=fitted["energy"], fit_errors=fitted["fit_errors"],
                      raw_path=raw_path, notes=notes, host_overhead=host_overhead,
                      decode_split_rule=decode_split_rule)


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


def tokenjoule_split_rule(spec: ModelSpec, tp: int) -> DecodeSplitRule:
    """The tokenjoule decode kernel's split rule for `spec` with its KV heads over `tp` GPUs."""
    return DecodeSplitRule(TARGET_PROGRAMS, MAX_SPLITS, max(1, spec.n_kv_heads // tp))


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
              base: GPUProfile | None = None) -> GPUProfile:
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

    Returns:
        The saved GPUProfile. Raises MeterError when energy cannot be measured.
    """
    out_path = Path(out_path)
    raw_path = out_path.with_name(out_path.stem + ".raw.parquet")
    if base is not None:
        check_base(base, spec, config)
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
            profile = _short_recalibrated(base, rows, host_overhead, meter, config, raw_path, kv_capacity)
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


def check_base(base: GPUProfile, spec: ModelSpec, config: CalibrationConfig) -> None:
    """A short re-calibration carries `base` only to the same model, engine, mode and TP degree."""
    mine = (spec.name, config.engine, config.mode, len(config.gpu_indices))
    theirs = (base.model.name, base.engine, base.mode, base.tp)
    if mine != theirs:
        raise ValueError(f"base profile is {theirs[0]} / {theirs[1]} / {theirs[2]} / tp{theirs[3]}, this calibration "
                         f"is {mine[0]} / {mine[1]} / {mine[2]} / tp{mine[3]}: a short re-calibration keeps all four")
    if base.method.get("short_recalibration_of"):
        raise ValueError("base profile is itself a short re-calibration; start from a fully calibrated profile")


def _short_recalibrated(base: GPUProfile, rows: list[dict[str, Any]], host: HostOverhead | None,
                        meter: EnergyMeter, config: CalibrationConfig, raw_path: Path,
                        kv_capacity_tokens: int) -> GPUProfile:
    """`base` re-scaled by this machine's short sweep, with this machine's metadata and raw file."""
    points = aggregate_points(rows, ("prefill", "decode", "mixed"))
    carried = short_recalibration(base, points, idle_power(rows), host, f"{len(points)} points on this machine")
    method = {**_method(meter, config), "short_recalibration_of": {
        "date": base.date, "gpu": base.gpu.get("name"), "gpu_uuids": list(gpu_uuids(base.gpu)),
        "content_sha256": base.content_sha256}}
    return dataclasses.replace(carried, gpu=gpu_info(meter), host=host_info(), software=software_info(),
                               method=method, date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               raw_path=raw_path.name, kv_capacity_tokens=kv_capacity_tokens)


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
