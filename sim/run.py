"""`run(config, trace, cost) -> SimResult`: build the cluster, simulate the trace, account energy. Writes nothing."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import simpy

from tokenjoule.calibrate.profile import GPUProfile, gpu_spec
from tokenjoule.kernels.spec import ConfigError, ModelSpec
from tokenjoule.sim import processes
from tokenjoule.sim.accounting import Ledger, energy_breakdown, pick_bin_s
from tokenjoule.sim.cost import AllReduce, CalibratedCost, CostModel, ModeledTPCost, RooflineCost, check_tp
from tokenjoule.sim.iterations import IterationLog
from tokenjoule.sim.metrics import request_table, summarize
from tokenjoule.sim.notes import RangeTally, run_notes
from tokenjoule.sim.policies import (
    CONTINUOUS_MAX_NUM_BATCHED_TOKENS,
    POLICIES,
    ChunkedPrefill,
    ContinuousBatching,
    StaticBatching,
)
from tokenjoule.sim.replica import Replica
from tokenjoule.traces.schema import Trace
from tokenjoule.traces.transforms import scale_rate, slice_window

logger = logging.getLogger(__name__)
COST_MODELS = ("calibrated", "roofline", "roofline-memory")


# Output files (run.json, compare.json) keep the keys they had before the fields took vLLM's names, so runs from
# before and after compare key for key.
_OUTPUT_KEYS = {"max_num_batched_tokens": "max_batched_tokens", "block_size": "kv_block_tokens",
                "arrival_window_s": "window_s"}


# Limits of the numeric settings (None, where a setting allows it, is always fine); `__post_init__` checks them.
_RANGES = {"replicas": ">= 1", "tp": ">= 1", "block_size": ">= 1", "rate_scale": "> 0", "pue": ">= 1",
           "host_power_w": ">= 0", "idle_power_w": ">= 0", "carbon_g_per_kwh": ">= 0", "slo_ttft_s": "> 0",
           "slo_tpot_s": "> 0", "max_num_seqs": ">= 1", "max_num_batched_tokens": ">= 1", "max_batch": ">= 1",
           "batch_timeout_s": ">= 0", "gpu_memory_utilization": "in (0, 1]", "allreduce_bus_bytes_per_s": "> 0",
           "allreduce_latency_s": ">= 0", "seed": ">= 0"}
# The CLI flag of each setting that has one, so an error names what the user typed (the others keep their field name).
_FLAGS = {"replicas": "--replicas", "tp": "--tp", "block_size": "--kv-block-tokens", "rate_scale": "--rate-scale",
          "pue": "--pue", "host_power_w": "--host-power-w", "idle_power_w": "--idle-power-w",
          "carbon_g_per_kwh": "--carbon", "slo_ttft_s": "--slo-ttft-s", "slo_tpot_s": "--slo-tpot-s",
          "max_num_seqs": "--max-num-seqs", "max_num_batched_tokens": "--max-batched-tokens",
          "max_batch": "--max-batch", "batch_timeout_s": "--batch-timeout-s", "seed": "--seed"}
# Settings only some policies read (see `SimConfig.make_policy`); the others ignore them.
POLICY_SETTINGS = {"max_batch": ("static",), "batch_timeout_s": ("static",), "max_num_seqs": ("continuous", "chunked"),
                   "max_num_batched_tokens": ("continuous", "chunked")}


def in_range(value: float, rule: str) -> bool:
    """Whether `value` is finite and meets `rule`: "> B", ">= B" or "in (0, 1]"."""
    if not math.isfinite(value):
        return False
    if rule == "in (0, 1]":
        return 0 < value <= 1
    bound = float(rule.split()[1])
    return value > bound if rule.startswith("> ") else value >= bound


@dataclass(frozen=True, slots=True)
class SimConfig:
    """A what-if: how the trace is served, and how energy is counted. Every modelling choice is a field.

    Attributes:
        policy: "static", "continuous" or "chunked" (see `policies`).
        replicas: data-parallel replicas (each `tp` GPUs).
        tp: tensor-parallel degree; must divide the model's query and KV heads.
        router: "round-robin", "least-outstanding" or "random" (seeded).
        cost: "calibrated" (needs a profile), "roofline" (FLOPs / peak x TDP) or "roofline-memory".
        gpu: datasheet name for the roofline models (default: the profile's, else "H100-SXM"); with a calibrated
            profile, a check that the profile is for this GPU.
        model: model name (a `ModelSpec` preset); with a profile, a check that the profile is for this model.
        max_num_seqs: most sequences per batch (continuous, chunked).
        max_num_batched_tokens: tokens per iteration (default 16384 continuous, 2048 chunked).
        max_batch: static batch size.
        batch_timeout_s: static batching: how long to wait for a full batch.
        gpu_memory_utilization: memory fraction for weights + KV (roofline KV sizing).
        block_size: tokens per paged KV block (vLLM's default block_size is 16).
        idle_power_w: replica idle power override (default: the profile's; 0 for roofline without a profile).
        host_power_w: host power per replica (W), charged for the whole run.
        pue: power usage effectiveness of the facility (>= 1).
        carbon_g_per_kwh: constant grid intensity (gCO2e/kWh).
        carbon_hourly: hourly intensities from the run's start (overrides the constant).
        slo_ttft_s: TTFT target for SLO attainment.
        slo_tpot_s: TPOT target for SLO attainment.
        rate_scale: multiply the arrival rate by this factor (arrival times divided by it).
        arrival_window_s: (start, end) seconds: keep the arrivals in [start, end) (re-zeroed), before `rate_scale`.
        allreduce_bus_bytes_per_s: all-reduce bus bandwidth for modeled TP.
        allreduce_latency_s: fixed cost per all-reduce for modeled TP.
        seed: seeds the random router.
        record_events: keep an (event, time_s, detail) log (tests, debugging); off for speed and memory.
    """

    policy: str = "continuous"
    replicas: int = 1
    tp: int = 1
    router: str = "round-robin"
    cost: str = "calibrated"
    gpu: str | None = None
    model: str | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    max_batch: int = 8
    batch_timeout_s: float = 0.0
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    idle_power_w: float | None = None
    host_power_w: float = 0.0
    pue: float = 1.0
    carbon_g_per_kwh: float | None = None
    carbon_hourly: tuple[float, ...] | None = None
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    rate_scale: float = 1.0
    arrival_window_s: tuple[float, float] | None = None
    allreduce_bus_bytes_per_s: float = 360e9
    allreduce_latency_s: float = 10e-6
    seed: int = 0
    record_events: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy {self.policy!r}: must be one of {', '.join(POLICIES)}")
        if self.cost not in COST_MODELS:
            raise ConfigError(f"--cost {self.cost!r}: must be one of {', '.join(COST_MODELS)}")
        if self.router not in processes.ROUTERS:
            raise ConfigError(f"--router {self.router!r}: must be one of {', '.join(processes.ROUTERS)}")
        for name, rule in _RANGES.items():
            value = getattr(self, name)
            if value is not None and not in_range(value, rule):
                raise ConfigError(f"{_FLAGS.get(name, name)} {value:g}: must be {rule}")
        hourly = self.carbon_hourly
        if hourly is not None and not (hourly and all(in_range(v, ">= 0") for v in hourly)):
            raise ConfigError("--carbon: an hourly intensity file must hold at least one hour, each intensity "
                              "finite and >= 0 gCO2e/kWh")
        window = self.arrival_window_s
        if window is not None and not 0 <= window[0] < window[1]:
            raise ConfigError(f"--window {window[0]:g}:{window[1]:g}: must be START:END seconds with "
                              "0 <= START < END")
        self.make_policy()  # the policy checks its own limits (e.g. chunked: a token budget above max_num_seqs)

    def make_policy(self) -> StaticBatching | ContinuousBatching | ChunkedPrefill:
        """The policy object this config names."""
        if self.policy == "static":
            return StaticBatching(self.max_batch, self.batch_timeout_s)
        if self.policy == "continuous":
            tokens = self.max_num_batched_tokens or CONTINUOUS_MAX_NUM_BATCHED_TOKENS
            return ContinuousBatching(self.max_num_seqs, tokens)
        return ChunkedPrefill(self.max_num_seqs, self.max_num_batched_tokens or 2048)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields, under the keys run.json and compare.json have always used."""
        return {_OUTPUT_KEYS.get(k, k): v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a run produced (in memory; the CLI writes it).

    Attributes:
        config: the configuration.
        summary: flat dict of figures (see `metrics.summarize`) plus the cost model's identity and `notes`
            (what the figures cannot be trusted for: `sim.notes`).
        requests: per-request table (see `metrics.request_table`).
        power_timeline: (bin start times s, mean cluster GPU power W per bin).
        events: the (event, time_s, detail) log when `config.record_events`, else None.
        iterations: every iteration and idle interval of every replica (see `iterations.SCHEMA`), when `run` was
            asked to record them, else None.
    """

    config: SimConfig
    summary: dict[str, Any]
    requests: pa.Table
    power_timeline: tuple[np.ndarray, np.ndarray]
    events: tuple[tuple[str, float, Any], ...] | None = None
    iterations: pa.Table | None = None


def build_cost_model(config: SimConfig, profile: GPUProfile | None) -> CostModel:
    """The cost model for `config`, checking that the profile matches the asked model, GPU and TP.

    An impossible combination (a TP degree that does not divide the heads, weights that leave no KV memory; the cost
    models check these) raises ConfigError.
    """
    try:
        return _cost_model(config, profile)
    except ConfigError:
        raise
    except ValueError as err:  # the cost models' own checks of the configuration they are built for
        raise ConfigError(str(err)) from err


def _cost_model(config: SimConfig, profile: GPUProfile | None) -> CostModel:
    if profile is not None and config.model and profile.model.name != config.model.lower():
        raise ConfigError(f"profile {profile.label} is for model {profile.model.name!r}, not {config.model!r}")
    if config.cost == "calibrated":
        if profile is None:
            raise ConfigError("cost model 'calibrated' needs a profile (or use --cost roofline)")
        if config.gpu and config.gpu != profile.gpu.get("datasheet") and config.gpu != profile.gpu.get("name"):
            raise ConfigError(f"profile {profile.label} was measured on {profile.gpu.get('name')!r} "
                              f"(datasheet {profile.gpu.get('datasheet')!r}), not {config.gpu!r}")
        base = CalibratedCost(profile)
        if config.tp == profile.tp:
            check_tp(profile.model, config.tp)
            return base
        return ModeledTPCost(base, config.tp, AllReduce(config.allreduce_bus_bytes_per_s, config.allreduce_latency_s))
    spec = profile.model if profile is not None else ModelSpec.from_name(config.model or "llama-3.1-8b")
    gpu = gpu_spec(config.gpu or (str(profile.gpu.get("datasheet", "H100-SXM")) if profile else "H100-SXM"))
    idle = config.idle_power_w if config.idle_power_w is not None else 0.0
    return RooflineCost(spec, gpu, config.tp, config.cost == "roofline-memory", config.gpu_memory_utilization, idle,
                        AllReduce(config.allreduce_bus_bytes_per_s, config.allreduce_latency_s))


def prepare_trace(trace: Trace, config: SimConfig) -> Trace:
    """Apply the time window (re-zeroed), then the rate scaling; each step's report is logged by the transform."""
    if config.arrival_window_s is not None:
        trace, _ = slice_window(trace, *config.arrival_window_s)
    if config.rate_scale != 1.0:
        trace, _ = scale_rate(trace, config.rate_scale)
    return trace


def run(config: SimConfig, trace: Trace, cost: CostModel | GPUProfile | None = None,
        on_progress: Callable[[int, int], None] | None = None, record_iterations: bool = False) -> SimResult:
    """Simulate serving `trace` under `config`, pricing each iteration with `cost`.

    Args:
        config: the what-if.
        trace: requests (arrival order).
        cost: a ready cost model; or a calibrated GPUProfile (or None, for the roofline models), from which
            `build_cost_model` makes the one `config` names.
        on_progress: called with (requests arrived, total) every few thousand arrivals (progress bars).
        record_iterations: keep every iteration for `SimResult.iterations` (one row each; off for speed and memory).

    Returns:
        The SimResult (nothing is written).
    """
    if cost is None or isinstance(cost, GPUProfile):
        cost = build_cost_model(config, cost)
    trace = prepare_trace(trace, config)
    if len(trace) == 0:
        raise ConfigError(f"{trace.source}: no requests to simulate (empty trace or window)")
    arrival = trace.column("arrival_s")
    if arrival[0] < 0:
        raise ConfigError(f"{trace.source}: arrivals must be >= 0")
    env = simpy.Environment()
    tally = RangeTally(cost.profile.measured_range) if cost.profile is not None else None
    ledger = Ledger(len(trace), pick_bin_s(float(arrival[-1]) * 1.5 + 60.0), tally)
    log: list | None = [] if config.record_events else None
    iterations = IterationLog() if record_iterations else None
    policy = config.make_policy()
    reps = [Replica(i, env, policy, cost, ledger, config.block_size, log, iterations) for i in range(config.replicas)]
    for rep in reps:
        rep.process = env.process(processes.replica(env, rep))
    router = processes.Router(reps, config.router, np.random.default_rng(config.seed),
                              _served_model(cost).max_position_embeddings)
    tick = (lambda done: on_progress(done, len(trace))) if on_progress is not None else None
    env.process(processes.arrivals(env, trace.iter_rows(), router, tick))
    env.run()
    return _result(config, trace, cost, reps, ledger, log, iterations)


def _result(config: SimConfig, trace: Trace, cost: CostModel, reps: list[Replica], ledger: Ledger,
            log: list | None, iterations: IterationLog | None) -> SimResult:
    pending = int((ledger.status == 0).sum())
    if pending:  # an invariant of the model, not a user error
        raise RuntimeError(f"simulation ended with {pending} unfinished requests (a scheduler bug)")
    for rep in reps:  # every block and context token must have been returned
        assert rep.blocks_used == 0 and rep.ctx_sum == 0 and not rep.running, (rep.blocks_used, rep.ctx_sum)
    finish = ledger.finish_s[np.isfinite(ledger.finish_s)]
    end_s = max(float(finish.max()) if len(finish) else 0.0, ledger.last_arrival_s)
    busy_j = sum(r.busy_j for r in reps)
    busy_s = sum(r.busy_s for r in reps)
    idle_w = config.idle_power_w if config.idle_power_w is not None else cost.idle_power_w
    idle_j = idle_w * (end_s * len(reps) - busy_s)
    timeline = ledger.timeline.gpu_power_w(end_s, len(reps), idle_w)
    energy = energy_breakdown(busy_j, idle_j, end_s, len(reps), config.host_power_w, config.pue,
                              config.carbon_g_per_kwh, config.carbon_hourly, timeline)
    table = request_table(ledger, trace.column("request_id"), trace.column("arrival_s"),
                          trace.column("input_tokens"), trace.column("output_tokens"))
    summary = summarize(table, energy, end_s, len(reps), config.tp, busy_s, config.slo_ttft_s, config.slo_tpot_s)
    summary.update(_identity(config, cost))
    summary.update(host_band_keys(summary, cost.profile))
    summary["notes"] = run_notes(table, summary, ledger.range_tally, _served_model(cost), cost.profile)
    return SimResult(config, summary, table, timeline, tuple(log) if log is not None else None,
                     iterations.table(end_s, len(reps), idle_w) if iterations is not None else None)


BAND_SOURCE = "launch-bound host band"


def host_band_keys(summary: dict[str, Any], profile: GPUProfile | None) -> dict[str, Any]:
    """`energy_band_j`, `duration_band_s` ([p10, p90]) and `band_source`; None each without a profile's host band.

    The band moves only what the host's speed moves: the GPU's busy energy (with its share of PUE) by the band's
    energy ratios, and the run's duration by its time ratios in proportion to the replicas' utilization (an idle
    gap waits on arrivals, not on the host). Idle energy is held as simulated.
    """
    band = profile.host_band if profile is not None else None
    if band is None:
        return {"energy_band_j": None, "duration_band_s": None, "band_source": None}
    total_j, before_pue = summary["energy_total_j"], summary["gpu_busy_j"] + summary["gpu_idle_j"] + summary["host_j"]
    busy_share = summary["gpu_busy_j"] / before_pue if before_pue else 0.0
    return {"energy_band_j": list(band.around(total_j, busy_share, "energy")),
            "duration_band_s": list(band.around(summary["duration_s"], summary["utilization"] or 0.0, "time")),
            "band_source": f"{BAND_SOURCE}: p10-p90 of {band.windows} repeated calibration windows "
                           f"({band.points} points) around their medians"}


def _served_model(cost: CostModel) -> ModelSpec:
    """The model the cost model prices: its profile's, or the roofline's spec."""
    return cost.profile.model if cost.profile is not None else cost.spec


def _identity(config: SimConfig, cost: CostModel) -> dict[str, Any]:
    profile = cost.profile
    return {
        "policy": config.policy, "replicas": config.replicas, "tp": config.tp, "router": config.router,
        "cost_model": cost.name, "modeled": bool(cost.modeled),
        "profile": profile.label if profile is not None else None,
        "profile_sha256": profile.content_sha256 if profile is not None else None,
        "kv_capacity_tokens": int(cost.kv_capacity_tokens), "idle_power_w": float(
            config.idle_power_w if config.idle_power_w is not None else cost.idle_power_w),
    }
