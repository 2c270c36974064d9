r"""One-command HF validation on a GPU: calibrate HF through generate(), then run offline static batches through it.

    tokenjoule validate hf --out "$OUT" [--model llama-3.1-8b]
    tokenjoule validate hf --out /tmp/hf --tiny [--device cpu]   # smoke run, tiny model

One Hugging Face model (random weights, eager, DynamicCache) is built once; the generate()-based sweep
(`sweep/generate.py`) calibrates its profile, then each scenario of `SCENARIOS` runs `static_batches` batches of
`static_batch` requests back to back through `model.generate()`, in one energy window per scenario that starts at a
counter tick (`aligned.measure_from_tick`: not quantized to the counter's period at its start). Files in
`--out` are those of `validate run` (at most 8): the profile JSON and its raw Parquet, `requests.parquet` (one
row per request: arrival 0, first token when generate()'s streamer received it, finish at its batch's end; seconds
from the scenario start), `iterations.parquet` (one row per generate() step, streamer put to put: `run_s` is the
whole step, host work inside generate() included, so `host_s` is 0), `timeline.parquet`, `validation.json` and
`validate.log`. generate() synchronizes every step, so the streamer's timestamps are when each token existed.

A time guard keeps the call under `budget_s`: after calibrating, each scenario runs as many of its batches as the
profile's own prediction (with a margin) says fit in the time left, or is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tokenjoule.calibrate.measure.aligned import measure_from_tick
from tokenjoule.calibrate.measure.meters import EnergyMeter, MeterError
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.profile import GPUProfile, ProfileError, load_profile
from tokenjoule.calibrate.recalibrate import SHORT_GENERATE_GRID, base_rows, check_base
from tokenjoule.calibrate.summary import static_batch_cost
from tokenjoule.calibrate.sweep.generate import GenerateGrid, GenerateRunner
from tokenjoule.calibrate.validate.device import idle_power_end_w, summary_line, validation_document, write_tables
from tokenjoule.calibrate.validate.replay import ReplayResult, shape_columns
from tokenjoule.calibrate.validate.scenarios import Scenario, scenario_requests
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec, load_spec

logger = logging.getLogger(__name__)

MARGIN = 1.25  # a scenario's batches are planned at this many times the profile's predicted time
RESERVE_S = 8.0  # kept back for the end idle window and writing the files
BUDGET_S = 480.0  # the whole call, well inside the device tool's 600 s per command
# The sweep gets 220 s of the 480 s; the scenarios below take ~160 s on an H100 (generate() steps ~80 ms there).
GRID = GenerateGrid(budget_s=220.0)


def static_scenario(batch: int, batches: int, input_tokens: int, output_tokens: int) -> Scenario:
    """An offline static-batching scenario (policy "static"; the whole batch is one prefill, as generate() runs it)."""
    return Scenario(f"hf_static_b{batch}_i{input_tokens}_o{output_tokens}", "static", max_num_seqs=batch,
                    max_num_batched_tokens=batch * input_tokens, static_batch=batch, static_batches=batches,
                    static_input_tokens=input_tokens, static_output_tokens=output_tokens)


SCENARIOS = (  # in priority order: the run issue 4 names first, the longest last
    static_scenario(4, 2, 1024, 128),
    static_scenario(16, 2, 2048, 64),
    static_scenario(8, 2, 512, 256),
    static_scenario(32, 2, 128, 512),
)


@dataclass(frozen=True, slots=True)
class HFPlan:
    """What one HF validation run does (tests and `--tiny` pass small ones).

    Attributes:
        spec: the model.
        device: torch device.
        grid: the generate() calibration grid (its `budget_s` bounds the sweep).
        scenarios: offline static scenarios, in priority order.
        gpu_memory_utilization: memory fraction the KV capacity is sized to.
        budget_s: the whole call (build, sweep, scenarios) should end within this many seconds.
        idle_end_s: a last idle-power window after the scenarios (0 to skip).
        seed: weight and prompt seed.
        short_from: a full HF profile of another machine of this GPU type, carried here by the host check
            (`recalibrate.SHORT_GENERATE_GRID`) instead of the full sweep; its scenarios are predicted with that.
    """

    spec: ModelSpec
    device: str = "cuda"
    grid: GenerateGrid = GRID
    scenarios: tuple[Scenario, ...] = SCENARIOS
    gpu_memory_utilization: float = 0.9
    budget_s: float = BUDGET_S
    idle_end_s: float = 3.0
    seed: int = 0
    short_from: Path | None = None


def tiny_plan(device: str = "cpu") -> HFPlan:
    """A smoke run: a 2-layer, 64-wide Llama with a four-point grid and two small scenarios (seconds on a CPU)."""
    spec = dataclasses.replace(ModelSpec.from_name("llama-3.2-1b"), name="tiny-llama", n_layers=2, hidden_size=64,
                               n_heads=4, n_kv_heads=2, head_dim=16, intermediate_size=128, vocab_size=512,
                               dtype="float32" if device == "cpu" else "bfloat16")
    grid = GenerateGrid(prefill_batches=(1, 4), prefill_lengths_tokens=(16, 64), new_tokens=4, target_s=0.05,
                        repeats=2, idle_s=0.2, settle_s=0.0, budget_s=30.0)
    # long enough (~0.1 s each on a CPU) for a 10 ms fake counter to tick inside every window
    scenarios = (static_scenario(2, 2, 32, 48), static_scenario(4, 1, 16, 48))
    return HFPlan(spec, device=device, grid=grid, scenarios=scenarios, budget_s=90.0, idle_end_s=0.2)


@dataclass(frozen=True, slots=True)
class HFRunConfig:
    """How the HF engine ran, as `validation.json`'s `runner_config` (`block_size` is stored as `block_size`).

    Attributes:
        engine: "hf".
        mode: "eager".
        device: torch device.
        dtype: weights' dtype.
        gpu_memory_utilization: memory fraction the KV capacity was sized to.
        cache: the KV cache generate() used.
        block_size: KV allocation granularity in tokens: DynamicCache grows by torch.cat, one token per step.
    """

    engine: str
    mode: str
    device: str
    dtype: str
    gpu_memory_utilization: float
    cache: str = "DynamicCache (grown by torch.cat every step)"
    block_size: int = 1


class TokenTimes:
    """A generate() streamer that timestamps each `put`: the prompt first, then each step's new tokens."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        """Record when generate() handed over the prompt or a step's tokens (it syncs the device to do so)."""
        self.times.append(self.clock())

    def end(self) -> None:
        """Nothing to flush."""


SCENARIO_WARMUP = "one whole batch of the scenario's shape, unmeasured"  # recorded in validation.json


def fit_scenario(s: Scenario, profile: GPUProfile, left_s: float) -> Scenario | None:
    """The scenario with as many of its batches as fit in `left_s` (the warm-up batch included), or None."""
    per_batch = static_batch_cost(profile, s.static_batch, s.static_input_tokens, s.static_output_tokens)["time_s"]
    n = min(s.static_batches, int(left_s // (MARGIN * per_batch)) - 1)  # one batch's time goes to the warm-up
    return dataclasses.replace(s, static_batches=n) if n >= 1 else None


def _step_rows(times: list[float], t0: float, s: Scenario) -> list[dict[str, Any]]:
    """One row per generate() step between consecutive streamer puts (step 1 the prefill, then the decodes)."""
    rows = []
    for k in range(1, len(times)):
        b, n = s.static_batch, s.static_input_tokens
        shape = IterationShape(prefill=((n, 0),) * b) if k == 1 else IterationShape(decode=(n + k - 2,) * b)
        rows.append({**shape_columns(shape), "start_s": times[k - 1] - t0, "run_s": times[k] - times[k - 1],
                     "host_s": 0.0})
    return rows


def run_static(runner: GenerateRunner, s: Scenario, meter: EnergyMeter,
               wait: Callable[[float], None] = time.sleep) -> ReplayResult:
    """Run the scenario's batches back to back through generate() in one window, after one unmeasured batch.

    The warm-up is a whole batch of the same shape (`SCENARIO_WARMUP`): the first generate() batch of a shape ran
    2.2-3.7x slower than the next on an H200 after a warm-up of only a few decode steps, a first-use cost the
    simulator (pricing warm iterations) does not model; a serving process that has run the shape before is warm.

    The window starts at an energy-counter tick (`aligned.measure_from_tick`, one "call" = all the batches),
    so its energy is not quantized to the counter's period at the start, as a plain begin/end window would be.
    """
    b, n_in, n_out = s.static_batch, s.static_input_tokens, s.static_output_tokens
    runner.generate(b, n_in, n_out)  # draws the prompt, warms this shape's path to every cache length it reaches
    starts: list[float] = []
    batches: list[tuple[list[float], float]] = []

    def run_batches() -> None:
        starts.append(meter.clock())
        for _ in range(s.static_batches):
            streamer = TokenTimes(meter.clock)
            runner.generate(b, n_in, n_out, streamer)
            batches.append((streamer.times, meter.clock()))

    m = measure_from_tick(meter, run_batches, target_s=0.0, wait=wait, max_calls=1)
    t0 = starts[0]
    requests, iterations = [], []
    for k, (times, end) in enumerate(batches):
        if len(times) != n_out + 1:  # the prompt, then one put per new token
            logger.warning("%s batch %d: the streamer saw %d puts, expected %d", s.name, k, len(times), n_out + 1)
        first = times[1] - t0 if len(times) > 1 else float("nan")
        requests += [{"request_id": k * b + i, "arrival_s": 0.0, "first_token_s": first, "finish_s": end - t0,
                      "input_tokens": n_in, "output_tokens": n_out} for i in range(b)]
        iterations += _step_rows(times, t0, s)
    end = batches[-1][1] - t0
    logger.info("scenario %s: %d batches, %.2f s, %s J", s.name, s.static_batches, m.time_s, m.energy_per_step_j)
    return ReplayResult(s.name, requests, iterations, m.time_s, m.energy_per_step_j, t0, True, 0.0,
                        {"window_end_s": end, "energy_error_bound": m.error_bound})


def _prediction(s: Scenario, r: ReplayResult, profile: GPUProfile) -> dict[str, Any]:
    cost = static_batch_cost(profile, s.static_batch, s.static_input_tokens, s.static_output_tokens)
    energy, time_s = cost["energy_j"] * s.static_batches, cost["time_s"] * s.static_batches
    return {"source": "profile of this run, calibrate.summary.static_batch_cost x batches (modeled, not measured)",
            "energy_j": energy, "time_s": time_s, "time_error": (time_s - r.duration_s) / r.duration_s,
            "energy_error": None if not r.energy_j else (energy - r.energy_j) / r.energy_j}


def run_plan(plan: HFPlan, out: Path, meter: EnergyMeter, runner: GenerateRunner | None = None,
             wait: Callable[[float], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Calibrate and run every scenario that fits; write the profile and tables into `out`; return validation.json.

    Args:
        plan: what to run.
        out: output directory.
        meter: the energy meter (its clock times the budget).
        runner: an HF runner (tests pass a fake); built from `plan` when None.
        wait: the sweep's sleep function (tests pass the fake timeline's `idle`); `time.sleep` when None.
        progress: show the sweep's progress bar.
    """
    start = meter.clock()
    if not meter.has_energy:  # refuse before building the model (calibrate() would refuse after)
        raise MeterError(f"cannot validate without an energy counter: {getattr(meter, 'reason', meter.method)}")
    if runner is None:
        from tokenjoule.kernels.iteration import build_runner

        runner = build_runner(plan.spec, engine="hf", mode="eager", device=plan.device,
                              gpu_memory_utilization=plan.gpu_memory_utilization, seed=plan.seed)
    print(f"[{meter.clock() - start:5.0f} s] HF model built: {runner.kv_capacity_tokens} KV tokens", flush=True)
    base = load_profile(plan.short_from) if plan.short_from is not None else None
    cal = CalibrationConfig(engine="hf", mode="eager", grid=SHORT_GENERATE_GRID if base else plan.grid,
                            device=plan.device, gpu_memory_utilization=plan.gpu_memory_utilization, seed=plan.seed)
    profile_path = out / f"profile-{plan.spec.name.replace('/', '_')}-hf-eager{'-short' if base else ''}.json"
    cal_start = meter.clock()
    profile = calibrate(plan.spec, cal, profile_path, meter=meter, progress=progress, runner=runner, wait=wait,
                        base=base, base_rows=base_rows(base, plan.short_from) if base else ())
    cal_s = meter.clock() - cal_start
    if base is not None:
        print(f"[{meter.clock() - start:5.0f} s] host check in {cal_s:.0f} s: {plan.short_from.name} carried here "
              f"({profile.notes.rsplit('; ', 1)[-1]})", flush=True)
    else:
        print(f"[{meter.clock() - start:5.0f} s] calibrated through generate() in {cal_s:.0f} s: idle "
              f"{profile.idle_power_w:.1f} W, latency CV median {profile.fit_errors['latency']['cv_median']:.2%}, "
              f"energy CV median {profile.fit_errors['energy']['cv_median']:.2%}", flush=True)
    results, predictions = [], []
    for s in plan.scenarios:
        left = plan.budget_s - (meter.clock() - start) - RESERVE_S - plan.idle_end_s
        run = fit_scenario(s, profile, left)
        if run is None:
            print(f"[{meter.clock() - start:5.0f} s] skipping {s.name}: would pass the {plan.budget_s:.0f} s budget",
                  flush=True)
            continue
        try:
            result = run_static(runner, run, meter, wait or time.sleep)
        except ValueError as err:  # e.g. out of GPU memory: keep what the other scenarios measure
            print(f"[{meter.clock() - start:5.0f} s] skipping {s.name}: {err}", flush=True)
            continue
        results.append((run, scenario_requests(run), result))
        pred = _prediction(run, result, profile)
        predictions.append(pred)
        err = "-" if pred["energy_error"] is None else f"{pred['energy_error']:+.1%}"
        print(f"[{meter.clock() - start:5.0f} s] {summary_line(run, result)} x{run.static_batches}; profile "
              f"predicts {pred['energy_j']:.0f} J ({err}), {pred['time_s']:.1f} s ({pred['time_error']:+.1%})",
              flush=True)
    config = HFRunConfig("hf", "eager", plan.device, str(getattr(runner, "dtype", plan.spec.dtype)),
                         plan.gpu_memory_utilization)
    # `validation_document` reads engine.runner.config (a dataclass with block_size) and .kv_capacity_tokens
    engine = SimpleNamespace(runner=SimpleNamespace(config=config, kv_capacity_tokens=runner.kv_capacity_tokens))
    doc = validation_document(plan, meter, profile_path, engine, results, start)  # reads plan.spec only
    for entry, pred, (_, _, r) in zip(doc["scenarios"], predictions, results, strict=True):
        entry.update(modeled_prediction=pred, energy_error_bound=r.meta["energy_error_bound"])
    doc.update(engine="hf", scenario_warmup=SCENARIO_WARMUP, run_wall_s=meter.clock() - start, calibration_wall_s=cal_s,
               profile_short_from=None if plan.short_from is None else plan.short_from.name,
               idle_power_end_w=idle_power_end_w(meter, plan.idle_end_s))
    write_tables(out, results)
    return doc


def make_plan(model: str = "llama-3.1-8b", *, device: str = "cuda", tiny: bool = False,
              budget_s: float | None = None, short_from: Path | None = None) -> HFPlan:
    """The plan of `tokenjoule validate hf`'s flags: `tiny_plan` with --tiny, else the model's full plan.

    With `short_from`, the base profile is checked now (one line naming the file, before the GPU is touched).
    """
    if tiny:
        plan = tiny_plan(device)
        plan = plan if budget_s is None else dataclasses.replace(plan, budget_s=budget_s)
    else:
        plan = HFPlan(load_spec(model), device=device, budget_s=BUDGET_S if budget_s is None else budget_s)
    if short_from is not None:
        try:
            check_base(load_profile(short_from), plan.spec, "hf", "eager", 1)
        except ProfileError as err:
            raise ProfileError(f"{short_from}: {err}") from err
        plan = dataclasses.replace(plan, short_from=Path(short_from))
    return plan
