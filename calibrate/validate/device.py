r"""One-command validation run on a GPU: calibrate, then replay trace scenarios on the same engine with the meter on.

    tokenjoule validate run --out "$OUT"

One engine (llama-3.1-8b, tokenjoule, CUDA graphs) is built once; a full-grid calibration measures its profile,
then the same engine (same weights, same KV cache) replays each scenario of `SCENARIOS` in real time. Files in
`--out` (at most 8, for the device tool): the profile JSON and its raw Parquet, `requests.parquet` (one row per
request per scenario, unfinished ones with NaN times), `iterations.parquet` (one row per engine iteration),
`timeline.parquet` (instantaneous power every 100 ms over the whole run, meter clock), `validation.json` (machine,
software, engine config, and per scenario its spec, measured totals and where it sits on the timeline) and
`validate.log`. The simulation of each scenario runs later, on a CPU, in `tokenjoule validate report`
(`calibrate/validate/report.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.calibrate.cost_form import ProfileError
from tokenjoule.calibrate.measure.machine import check_device, gpu_info, gpu_uuids, host_info, software_info
from tokenjoule.calibrate.measure.meters import EnergyMeter, NVMLMeter, make_meter
from tokenjoule.calibrate.pipeline import CalibrationConfig, calibrate
from tokenjoule.calibrate.profile import GPUProfile, load_profile
from tokenjoule.calibrate.recalibrate import SHORT_GRID, base_rows, check_base
from tokenjoule.calibrate.sweep.grid import GridConfig
from tokenjoule.calibrate.validate import scenarios as scenario_data
from tokenjoule.calibrate.validate.replay import ReplayRequest, ReplayResult, build_engine, replay, use_policy
from tokenjoule.calibrate.validate.scenarios import SCENARIO_SETS, SCENARIOS, Scenario, scenario_requests
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ConfigError, ModelSpec
from tokenjoule.traces.files import write_atomic

logger = logging.getLogger(__name__)

# The full calibration grid (mixed iterations included and fitted): the profile this run measures is also the one
# shipped for its GPU. Settling is shorter because the engine build and graph capture already warmed the GPU.
GRID = GridConfig(settle_s=10.0)
BUDGET_S = 560.0  # the device tool stops a command at 600 s


@dataclass(frozen=True, slots=True)
class Plan:
    """What one validation run does (tests pass a tiny one).

    Attributes:
        spec: the model.
        mode: engine mode.
        device: torch device.
        grid: calibration grid.
        scenarios: the scenarios, in order.
        max_num_seqs: the runner's sequence limit (largest CUDA graph).
        max_num_batched_tokens: the runner's token limit.
        gpu_memory_utilization: engine memory fraction.
        budget_s: skip a scenario that would end after this many seconds of the run.
        num_kv_blocks: force the KV cache size (None: from memory).
        warmup_requests: requests per policy in the unmeasured warm-up replay.
        idle_end_s: a last idle-power window after the scenarios (0 to skip).
        profile: a profile measured earlier (by this entry, on the same GPU) to replay against instead of
            calibrating; it is copied into the output folder with its raw file, and its GPU UUID is checked.
        short_from: a full profile of another machine of this GPU type to carry here by a short re-calibration
            over `short_grid` and replay against, instead of the full sweep.
        short_grid: the short re-calibration's grid.
    """

    spec: ModelSpec
    mode: str = "cudagraph"
    device: str = "cuda"
    grid: GridConfig = GRID
    scenarios: tuple[Scenario, ...] = SCENARIOS
    max_num_seqs: int = 512
    max_num_batched_tokens: int = 16384
    gpu_memory_utilization: float = 0.9
    budget_s: float = BUDGET_S
    num_kv_blocks: int | None = None
    warmup_requests: int = 48
    idle_end_s: float = 3.0
    profile: Path | None = None
    short_from: Path | None = None
    short_grid: GridConfig = SHORT_GRID


def _warm_graphs(runner: Any) -> None:
    """Run one decode step of every CUDA-graph bucket (captures them) and one mixed step, outside any window."""
    from tokenjoule.kernels.runner import graph_buckets

    shapes = [IterationShape(decode=(64,) * b) for b in graph_buckets(runner.config.max_num_seqs)]
    shapes.append(IterationShape(prefill=((512, 256),), decode=(64,) * 16))
    for shape in shapes:
        runner.prepare(shape)
    runner.release()


def _warm_policies(engine: Any, meter: EnergyMeter, plan: Plan) -> list[tuple[Scenario, list, ReplayResult]]:
    """Requests of varied lengths through each policy, all at t=0, before the scenarios (warm-up).

    Their iterations are kept: they time the engine's host work per iteration apart from any scenario.
    """
    n = plan.warmup_requests
    out = []
    for policy, budget in (("continuous", 8192), ("chunked", 2048)):
        s = Scenario(f"warmup_{policy}", policy, max_num_seqs=min(256, plan.max_num_seqs),
                     max_num_batched_tokens=min(budget, plan.max_num_batched_tokens))
        cap = s.max_num_batched_tokens // 2
        warm = [ReplayRequest(i, 0.0, min(cap, 100 + (i * 137) % 900), min(cap, 16 + (i * 29) % 112))
                for i in range(n)]
        if n:
            use_policy(engine, policy, s.max_num_seqs, s.max_num_batched_tokens)
            out.append((s, warm, replay(engine, warm, meter, name=s.name, max_wall_s=60.0)))
    return out


def run_plan(plan: Plan, out: Path, meter: EnergyMeter, progress: bool = False) -> dict[str, Any]:
    """Calibrate and replay every scenario; write the raw files into `out`; return the validation.json content."""
    from tokenjoule.kernels.iteration import TokenjouleIterationRunner
    from tokenjoule.kernels.runner import RunnerConfig

    start = time.perf_counter()
    config = RunnerConfig(mode=plan.mode, device=plan.device, gpu_memory_utilization=plan.gpu_memory_utilization,
                          max_num_seqs=plan.max_num_seqs, max_num_batched_tokens=plan.max_num_batched_tokens,
                          num_kv_blocks=plan.num_kv_blocks)
    base = load_profile(plan.short_from) if plan.short_from is not None else None
    cal = CalibrationConfig(engine="tokenjoule", mode=plan.mode, grid=plan.short_grid if base else plan.grid,
                            device=plan.device,
                            gpu_memory_utilization=plan.gpu_memory_utilization, max_num_seqs=plan.max_num_seqs,
                            max_num_batched_tokens=plan.max_num_batched_tokens)
    if base is not None:  # refuse a base of another setup before minutes of engine build
        try:
            check_base(base, plan.spec, cal.engine, cal.mode, len(cal.gpu_indices))
        except ProfileError as err:
            raise ProfileError(f"{plan.short_from}: {err}") from err
    engine = build_engine(plan.spec, config)
    print(f"[{time.perf_counter() - start:5.0f} s] engine built: {engine.runner.kv_capacity_tokens} KV tokens",
          flush=True)
    profile_path = out / (f"profile-{plan.spec.name.replace('/', '_')}-tokenjoule-{plan.mode}"
                          f"{'-short' if base else ''}.json")
    iteration_runner = TokenjouleIterationRunner(plan.spec, config, runner=engine.runner)  # shares weights and KV
    if plan.profile is not None:
        profile_path = out / plan.profile.name
        profile = _reuse_profile(plan.profile, out, gpu_info(meter))
        print(f"[{time.perf_counter() - start:5.0f} s] reusing {plan.profile.name} (calibrated {profile.date})",
              flush=True)
    else:
        profile = calibrate(plan.spec, cal, profile_path, meter=meter, progress=progress, runner=iteration_runner,
                            base=base, base_rows=base_rows(base, plan.short_from) if base else ())
        iteration_runner.release()
        how = f" (short, from {plan.short_from.name})" if plan.short_from is not None else ""
        print(f"[{time.perf_counter() - start:5.0f} s] calibrated{how}: idle {profile.idle_power_w:.1f} W, latency "
              f"CV median {profile.fit_errors['latency']['cv_median']:.2%}, energy CV median "
              f"{profile.fit_errors['energy']['cv_median']:.2%}", flush=True)
    if plan.mode == "cudagraph":
        _warm_graphs(iteration_runner)
    warmups = _warm_policies(engine, meter, plan)
    print(f"[{time.perf_counter() - start:5.0f} s] warmed up", flush=True)
    results: list[tuple[Scenario, list[ReplayRequest], ReplayResult]] = []
    for s in plan.scenarios:
        elapsed = time.perf_counter() - start
        if elapsed + s.expected_s(plan.mode) > plan.budget_s:
            print(f"[{elapsed:5.0f} s] skipping {s.name}: would pass the {plan.budget_s:.0f} s budget", flush=True)
            continue
        reqs = scenario_requests(s)
        if not reqs:
            print(f"[{elapsed:5.0f} s] skipping {s.name}: no requests in its slice", flush=True)
            continue
        use_policy(engine, s.policy, s.max_num_seqs, s.max_num_batched_tokens)
        result = replay(engine, reqs, meter, name=s.name, static_batch=s.static_batch or None,
                        max_wall_s=min(1.5 * s.expected_s(plan.mode) + 10.0, plan.budget_s - elapsed))
        results.append((s, reqs, result))
        print(f"[{time.perf_counter() - start:5.0f} s] {summary_line(s, result)}", flush=True)
    doc = validation_document(plan, meter, profile_path, engine, results, start)
    doc["profile_reused"] = plan.profile is not None
    doc["profile_short_from"] = None if plan.short_from is None else plan.short_from.name
    doc["warmups"] = validation_document(plan, meter, profile_path, engine, warmups, start)["scenarios"]
    doc["idle_power_end_w"] = idle_power_end_w(meter, plan.idle_end_s)
    write_tables(out, warmups + results)
    return doc


def _reuse_profile(path: Path, out: Path, gpu: dict[str, Any]) -> GPUProfile:
    """Copy an earlier profile and its raw file into `out`; refuse one measured on another GPU."""
    profile = load_profile(path)
    theirs, mine = gpu_uuids(profile.gpu), gpu_uuids(gpu)
    if theirs != mine:
        raise ProfileError(f"{path}: calibrated on GPU {', '.join(map(str, theirs))}, this is "
                           f"{', '.join(map(str, mine))}; a validation compares against a profile of the same GPU")
    for src in (path, path.parent / (profile.raw_path or "")):
        if src.is_file() and src.resolve() != (out / src.name).resolve():
            shutil.copyfile(src, out / src.name)
    return profile


def idle_power_end_w(meter: EnergyMeter, window_s: float) -> float | None:
    """Idle power with the model resident, after the scenarios (1 s of settling, then a `window_s` window)."""
    if window_s <= 0:
        return None
    time.sleep(1.0)
    meter.begin_window("idle_end")
    time.sleep(window_s)
    m = meter.end_window("idle_end")
    return m.power_w


def summary_line(s: Scenario, r: ReplayResult) -> str:
    """One scenario's replay in one line: requests, iterations, duration, energy, power, idle time."""
    power = f"{r.energy_j / r.duration_s:6.1f} W" if r.energy_j is not None and r.duration_s > 0 else "  no energy"
    energy = f"{r.energy_j:9.0f} J" if r.energy_j is not None else "        - J"
    return (f"{s.name:24s} {len(r.requests):5d} req {len(r.iterations):6d} it {r.duration_s:6.1f} s {energy} "
            f"{power} idle {r.idle_s:5.1f} s{'' if r.completed else ' INCOMPLETE'}")


# validation.json keeps the keys its earlier runs wrote (readers of the measured runs use them), though the Python
# fields now carry the one vLLM name per concept.
_SCENARIO_KEYS = {"max_num_batched_tokens": "max_batched_tokens"}
_RUNNER_KEYS = {"max_num_seqs": "max_batch_seqs", "max_num_batched_tokens": "max_batched_tokens"}


def _stored_keys(fields: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """`fields` with each field name in `keys` under its validation.json key instead."""
    return {keys.get(k, k): v for k, v in fields.items()}


def validation_document(plan: Plan, meter: EnergyMeter, profile_path: Path, engine: Any,
                        results: list[tuple[Scenario, list[ReplayRequest], ReplayResult]],
                        start: float) -> dict[str, Any]:
    """`validation.json`'s content: machine, software, meter, engine config, and each scenario's measured totals.

    `engine` needs `runner.config` (a dataclass with `block_size`) and `runner.kv_capacity_tokens`.
    """
    scenarios = []
    for s, reqs, r in results:
        host = sum(i["host_s"] for i in r.iterations)
        run = sum(i["run_s"] for i in r.iterations)
        scenarios.append({"scenario": _stored_keys(dataclasses.asdict(s), _SCENARIO_KEYS), "n_requests": len(reqs),
                          "n_finished": len(r.requests),
                          "completed": r.completed, "duration_s": r.duration_s, "energy_j": r.energy_j,
                          "last_finish_s": r.meta["window_end_s"], "idle_sleep_s": r.idle_s,
                          "iterations": len(r.iterations), "iteration_run_s": run, "iteration_host_s": host,
                          "clock_start_s": r.clock_start_s, "max_total_tokens": scenario_data.MAX_TOTAL_TOKENS,
                          **{k: r.meta.get(k) for k in ("energy_aligned", "energy_bound_j", "energy_raw_j",
                                                         "idle_power_w")}})
    config = _stored_keys(dataclasses.asdict(engine.runner.config), _RUNNER_KEYS)
    return {"kind": "tokenjoule-validation-run", "schema_version": 1,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": plan.spec.name,
            "gpu": gpu_info(meter), "host": host_info(), "software": software_info(), "meter": meter.metadata(),
            "runner_config": config, "kv_capacity_tokens": int(engine.runner.kv_capacity_tokens),
            "kv_block_tokens": int(config["block_size"]), "profile": profile_path.name,
            "run_wall_s": time.perf_counter() - start, "scenarios": scenarios}


def write_tables(out: Path, results: list[tuple[Scenario, list[ReplayRequest], ReplayResult]]) -> None:
    """Write `requests.parquet` (one row per request per scenario, NaN times if unfinished) and `iterations.parquet`."""
    req_rows, it_rows = [], []
    nan = float("nan")
    for s, reqs, r in results:
        done = {row["request_id"]: row for row in r.requests}
        for q in reqs:
            row = done.get(q.request_id, {})
            req_rows.append({"scenario": s.name, "request_id": q.request_id, "arrival_s": q.arrival_s,
                             "input_tokens": q.input_tokens, "output_tokens": q.output_tokens,
                             "first_token_s": row.get("first_token_s", nan), "finish_s": row.get("finish_s", nan)})
        it_rows += [{"scenario": s.name, **it} for it in r.iterations]
    pq.write_table(pa.Table.from_pylist(req_rows), out / "requests.parquet")
    pq.write_table(pa.Table.from_pylist(it_rows), out / "iterations.parquet")


def log_to(out: Path) -> None:
    """Send the run's log (and the sweep's per-point warnings) to `out/validate.log`, not the console."""
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[logging.FileHandler(out / "validate.log")], force=True)
    logging.captureWarnings(True)


def run_metered(out: Path, device: str, run: Callable[[EnergyMeter], dict[str, Any]]) -> dict[str, Any]:
    """The frame of a validation run: meter GPU 0 with a power timeline around `run`, then write its document.

    Raises MeterError without a usable GPU or energy counter; writes `timeline.parquet` even when `run` fails, and
    `validation.json` atomically only when it succeeds.

    Returns:
        The validation document `run` returned (as written to `validation.json`).
    """
    if device.startswith("cuda"):
        check_device((0,))
    meter = make_meter((0,))
    sampler = None
    if isinstance(meter, NVMLMeter):
        from tokenjoule.calibrate.measure.sampler import PowerSampler

        sampler = PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock).start()
    try:
        doc = run(meter)
    finally:
        if sampler is not None:
            pq.write_table(pa.Table.from_pylist([x.to_row() for x in sampler.stop()]), out / "timeline.parquet")
        meter.close()
    write_atomic(out / "validation.json", lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1, default=str)))
    return doc


def make_plan(model: str = "llama-3.1-8b", *, mode: str = "cudagraph", budget_s: float = BUDGET_S,
              quick: bool = False, scenario_set: str = "short", scenarios: str = "", profile: Path | None = None,
              short_from: Path | None = None) -> Plan:
    """The plan of `tokenjoule validate run`'s flags; ConfigError naming the flag for a bad combination or name."""
    if profile is not None and short_from is not None:
        raise ConfigError("--profile and --short-from: give one")
    if scenario_set not in SCENARIO_SETS:
        raise ConfigError(f"--scenario-set: unknown {scenario_set!r}; known: {sorted(SCENARIO_SETS)}")
    if mode not in ("cudagraph", "eager"):
        raise ConfigError(f"--mode: {mode!r} must be cudagraph or eager")
    chosen = SCENARIO_SETS[scenario_set]
    names = [n for n in scenarios.split(",") if n]
    by_name = {s.name: s for s in chosen}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise ConfigError(f"--scenarios: unknown {unknown}; known: {[s.name for s in chosen]}")
    return Plan(ModelSpec.from_name(model), mode=mode, budget_s=budget_s, grid=GridConfig.quick() if quick else GRID,
                profile=profile, short_from=short_from,
                scenarios=tuple(by_name[n] for n in names) if names else chosen)


def scenario_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The scenarios' measured totals as text lines: requests, finished, duration, energy, power, J per request."""
    lines = [f"{'scenario':24s} {'req':>5s} {'fin':>5s} {'dur s':>7s} {'energy J':>9s} {'W':>6s} {'J/req':>7s}"]
    for r in rows:
        e = r["energy_j"]
        lines.append(f"{r['scenario']['name']:24s} {r['n_requests']:5d} {r['n_finished']:5d} {r['duration_s']:7.1f} "
                     f"{'-' if e is None else round(e):>9} {'-' if e is None else round(e / r['duration_s']):>6} "
                     f"{'-' if e is None or not r['n_finished'] else round(e / r['n_finished'], 1):>7}")
    return lines
