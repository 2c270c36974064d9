"""`project(source, profile, config) -> Projection`: three energy estimates of a trace in one streamed pass.

The trace (a file of any size, or a loaded Trace) is read once in record batches, in memory independent of its
length. Each batch feeds three estimators side by side:

- `paper` (`project_paper`): the paper's binned offline estimate, full static batches per length bin.
- `theoretical` (`project_theory`): TDP x FLOPs / peak FLOP/s per request, the paper's "ideal".
- `load-aware` (`project_load`): per time window, the batching a continuous-batching server would do at that
  window's rate and length mix (short simulations padded to outlast the requests' time in the batch), with idle
  power for unused capacity, and error bars.

Each estimate's GPU energy then gets the facility terms `simulate` adds (`accounting.energy_breakdown`, with the
host power, PUE and constant grid intensity of `config.sim`): host power is charged per replica for the time the
estimate's server runs, the load-aware run's duration on every replica, the paper's batches back to back on one
replica, the theoretical GPU-seconds at peak spread over the `tp` GPUs of a replica.

The estimators' sums merge (`StreamSums.merge`), so `shards.project_sharded` computes the same estimates with a
Parquet trace's row groups and the window simulations run as parallel tasks. Nothing is written here; the CLI
(`project_cli`) prints and writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenjoule.calibrate.profile import GPUProfile, gpu_spec
from tokenjoule.kernels.spec import ConfigError, ModelSpec
from tokenjoule.sim.accounting import EnergyBreakdown, energy_breakdown
from tokenjoule.sim.cost import CostModel, ModeledTPCost
from tokenjoule.sim.project.binned import PaperEstimate, paper_estimate
from tokenjoule.sim.project.load_aware import LoadAwareConfig, LoadAwareEstimate, LoadAwareProjector, WindowSums
from tokenjoule.sim.project.stream import Batch, FileStream, StreamInfo, run_stream, trace_batches
from tokenjoule.sim.project.theoretical import TheoryAccumulator, TheoryEstimate, TheoryInputs
from tokenjoule.sim.run import SimConfig, build_cost_model
from tokenjoule.traces.binning import BinSpec, bin_arrays, empty_counts, merge
from tokenjoule.traces.loaders import LoadOptions
from tokenjoule.traces.schema import Trace

logger = logging.getLogger(__name__)

ESTIMATORS = ("paper", "theoretical", "load-aware")
# The energy keys of `simulate --json` each estimate also has (its GPU split is its own: busy_j/idle_j, energy_j).
FACILITY_KEYS = ("energy_total_j", "host_j", "facility_overhead_j", "kwh", "kg_co2e")


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    """Everything the three estimates depend on.

    Attributes:
        bins: the paper's bins and what to do with lengths above the last edge.
        max_batch: the paper estimate's cap on B (default 256, vLLM's default max_num_seqs).
        peak_flops: theoretical: peak FLOP/s of one GPU (default: the datasheet's dense figure).
        tdp_w: theoretical: TDP of one GPU (default: the datasheet's).
        load: load-aware windows and cache.
        sim: the server the paper and load-aware estimates price (cost model, policy, replicas, tp, ...).
        estimators: which estimates to compute.
    """

    bins: BinSpec = field(default_factory=BinSpec)
    max_batch: int = 256
    peak_flops: float | None = None
    tdp_w: float | None = None
    load: LoadAwareConfig = field(default_factory=LoadAwareConfig)
    sim: SimConfig = field(default_factory=SimConfig)
    estimators: tuple[str, ...] = ESTIMATORS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.estimators) - set(ESTIMATORS))
        if unknown or not self.estimators:
            raise ConfigError(f"--estimators {','.join(self.estimators)!r}: must be a non-empty subset of "
                              f"{', '.join(ESTIMATORS)}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}: must be >= 1")
        for name, flag in (("peak_flops", "--peak-flops"), ("tdp_w", "--tdp-w")):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{flag} {value:g}: must be > 0")
        if self.sim.carbon_hourly is not None:
            raise ConfigError("--carbon: an hourly file has no use in a projection, whose estimates have no "
                              "hour-by-hour timeline; give a constant intensity (a number or a region)")


@dataclass(frozen=True, slots=True)
class Projection:
    """The three estimates of one trace, and what they were computed from.

    Attributes:
        source: trace file or name.
        requests: requests read (after load-time drops).
        stream: what reading did (rows read and dropped), None for an in-memory trace.
        paper: the paper's binned estimate (None when not asked).
        theoretical: the FLOPs-based estimate (None when not asked).
        load_aware: the load-aware estimate (None when not asked).
        cost: identity of the cost model ("calibrated: <profile label>" or the roofline name).
        config: the configuration.
    """

    source: str
    requests: int
    stream: StreamInfo | None
    paper: PaperEstimate | None
    theoretical: TheoryEstimate | None
    load_aware: LoadAwareEstimate | None
    cost: str
    config: ProjectConfig

    def facility(self) -> dict[str, tuple[EnergyBreakdown, int]]:
        """Per estimate asked: its energy with host power, PUE and carbon, and the requests it counts."""
        sim = self.config.sim

        def total(gpu_j: float, run_s: float, replicas: int) -> EnergyBreakdown:
            # GPU busy and idle enter as one sum: only their sum counts, and it stays exactly the estimate's energy_j.
            return energy_breakdown(gpu_j, 0.0, run_s, replicas, sim.host_power_w, sim.pue, sim.carbon_g_per_kwh)

        out = {}
        if self.paper:
            out["paper"] = total(self.paper.energy_j, self.paper.busy_s, 1), self.paper.estimated
        if self.theoretical:
            t = self.theoretical
            out["theoretical"] = total(t.energy_j, t.gpu_s / sim.tp, 1), t.requests
        if self.load_aware:
            la = self.load_aware
            out["load_aware"] = total(la.energy_j, la.duration_s, la.replicas), la.requests
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the estimates (each with simulate's facility keys) and their inputs.

        Each estimate's `j_per_request` is its `energy_total_j` per request, as in `simulate --json`.
        """
        c = self.config
        facility = self.facility()
        estimates: dict[str, Any] = {}
        for name, est in (("paper", self.paper), ("theoretical", self.theoretical), ("load_aware", self.load_aware)):
            if est is None:
                estimates[name] = None
                continue
            energy, requests = facility[name]
            keys = energy.to_dict()
            estimates[name] = {**est.to_dict(), "j_per_request": energy.total_j / requests if requests else None,
                               **{k: keys[k] for k in FACILITY_KEYS}}
        return {
            "source": self.source, "requests": self.requests, "cost_model": self.cost,
            "rows_read": self.stream.rows_read if self.stream else self.requests,
            "rows_dropped": self.stream.rows_dropped if self.stream else 0,
            "trace_notes": [note.to_dict() for note in self.stream.notes] if self.stream else [],
            "estimates": estimates,
            "inputs": {
                "input_edges": list(c.bins.input_edges), "output_edges": list(c.bins.output_edges),
                "out_of_range": c.bins.out_of_range, "max_batch": c.max_batch, "peak_flops": c.peak_flops,
                "tdp_w": c.tdp_w, "window_s": c.load.window_s, "pad_s": c.load.pad_s,
                "rate_ratio": c.load.rate_ratio, "mix_ratio": c.load.mix_ratio,
                "max_sim_requests": c.load.max_sim_requests, "max_pad_s": c.load.max_pad_s,
                "pad_coverage": c.load.pad_coverage, "sims_per_signature": c.load.sims_per_signature,
                "sim": c.sim.to_dict(),
            },
        }


class StreamSums:
    """What the estimators add up over a trace's batches: rows, the paper's bin counts, FLOPs, per-window terms.

    Sums of separate stretches of a trace (shards, read in parallel) `merge` into those of one pass, the counts
    exactly and float sums up to round-off.

    Args:
        config: which estimators, and the paper's bins.
        theory: the FLOPs sum (None without the theoretical estimate).
        load: the load-aware per-window sums, or a whole `LoadAwareProjector` when one pass streams the trace (None
            without the load-aware estimate).
    """

    def __init__(self, config: ProjectConfig, theory: TheoryAccumulator | None,
                 load: LoadAwareProjector | WindowSums | None) -> None:
        self.bins = config.bins
        self.rows = 0
        self.counts = empty_counts(config.bins) if "paper" in config.estimators else None
        self.theory, self.load = theory, load

    def add(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """Add a batch (arrivals sorted)."""
        self.rows += len(arrival_s)
        if self.counts is not None:
            self.counts = merge(self.counts, bin_arrays(input_tokens, output_tokens, self.bins))
        if self.theory is not None:
            self.theory.add(input_tokens, output_tokens)
        if self.load is not None:
            self.load.add(arrival_s, input_tokens, output_tokens)

    def merge(self, other: StreamSums) -> None:
        """Add the sums of another stretch of the same trace (per-window sums only: see `WindowSums.merge`)."""
        self.rows += other.rows
        if self.counts is not None and other.counts is not None:
            self.counts = merge(self.counts, other.counts)
        if self.theory is not None and other.theory is not None:
            self.theory.merge(other.theory)
        if isinstance(self.load, WindowSums) and isinstance(other.load, WindowSums):
            self.load.merge(other.load)


@dataclass(frozen=True, slots=True)
class Pricing:
    """What the estimates are priced with, from the configuration and the profile.

    Attributes:
        cost: the cost model (paper and load-aware).
        spec: the model (theoretical FLOPs).
        theory: peak FLOP/s and TDP (theoretical).
    """

    cost: CostModel
    spec: ModelSpec
    theory: TheoryInputs

    @classmethod
    def of(cls, config: ProjectConfig, profile: GPUProfile | None) -> Pricing:
        """The pricing of `config` with `profile` (None only with a roofline cost model)."""
        cost = build_cost_model(config.sim, profile)
        if profile is not None:
            spec, gpu_name = profile.model, config.sim.gpu or str(profile.gpu.get("datasheet", "H100-SXM"))
        else:
            spec, gpu_name = ModelSpec.from_name(config.sim.model or "llama-3.1-8b"), config.sim.gpu or "H100-SXM"
        return cls(cost, spec, TheoryInputs.of(spec, gpu_spec(gpu_name), config.peak_flops, config.tdp_w))

    def describe(self) -> str:
        """Identity of the cost model ("calibrated: <profile label>" or the roofline name)."""
        cost = self.cost
        profile = getattr(cost, "profile", None) or getattr(getattr(cost, "base", None), "profile", None)
        label = f": {profile.label}" if profile is not None else ""
        return f"{cost.name}{' (modeled tp)' if isinstance(cost, ModeledTPCost) else ''}{label}"

    def theory_sums(self, config: ProjectConfig) -> TheoryAccumulator | None:
        """A zero FLOPs sum, or None when the theoretical estimate is not asked for."""
        return TheoryAccumulator(self.spec, self.theory) if "theoretical" in config.estimators else None


def projection_of(name: str, info: StreamInfo | None, sums: StreamSums, load: LoadAwareEstimate | None,
                  pricing: Pricing, config: ProjectConfig) -> Projection:
    """The Projection from the summed batches (and the load-aware estimate, already finished)."""
    if sums.rows == 0:
        raise ConfigError("no requests to project")
    paper = paper_estimate(sums.counts, pricing.cost, config.max_batch) if sums.counts is not None else None
    logger.info("%s: projected %d requests", name, sums.rows)
    return Projection(name, sums.rows, info, paper, sums.theory.result() if sums.theory else None, load,
                      pricing.describe(), config)


def project(source: str | Path | Trace, profile: GPUProfile | None, config: ProjectConfig | None = None, *,
            fmt: str | None = None, options: LoadOptions | None = None,
            progress: Callable[[int, int], None] | None = None, batch_rows: int = 1 << 20) -> Projection:
    """Project a trace's serving energy three ways in one streamed pass.

    Args:
        source: a trace file, a bundled trace name, or a loaded Trace.
        profile: the calibrated profile (None only with a roofline `config.sim.cost`).
        config: estimators and their settings.
        fmt: trace format (files; default: detect).
        options: load options (files).
        progress: called as progress(done, total) after each batch read from a file.
        batch_rows: rows per record batch.

    Returns:
        The Projection (nothing is written).
    """
    config = config or ProjectConfig()
    pricing = Pricing.of(config, profile)

    def consume(batches: Iterator[Batch]) -> StreamSums:
        load = LoadAwareProjector(pricing.cost, config.sim, config.load) if "load-aware" in config.estimators else None
        sums = StreamSums(config, pricing.theory_sums(config), load)
        for arrival, inp, out in batches:
            sums.add(arrival, inp, out)
        if sums.rows == 0:
            raise ConfigError("no requests to project")
        return sums

    if isinstance(source, Trace):
        sums = consume(trace_batches(source, batch_rows))
        name, info = source.source, None
    else:
        stream = FileStream(source, fmt, options, batch_rows, progress=progress)
        sums = run_stream(stream, consume)
        name, info = stream.source, stream.info
    load = sums.load.result() if isinstance(sums.load, LoadAwareProjector) else None
    return projection_of(name, info, sums, load, pricing, config)
