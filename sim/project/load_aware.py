"""Load-aware projection: per time window, the arrival rate and length mix set how a server batches, hence its energy.

Covers:
- An exact split of a continuous-batching server's energy into terms known per request (its prefill priced alone,
  the attention/context term of each decode step) and one load-dependent term: the base cost of a decode step,
  shared by the step's batch. Only that term needs a simulation.
- Per window, a short simulation (`sim.run`, the replay's own model) of the window's requests, padded with the
  requests just before and after it so that the batch is warm, measures the load-dependent term per decode token
  (`u_j`, `u_s`). The pads must outlast the time a request holds a batch seat (its output length x the step
  time: a few seconds on a CUDA-graph engine, tens of seconds on an eager one with a costly attention term), or
  the window's own requests decode in a batch still filling up or already draining and pay too large a share of
  each step: so the pad grows to cover that time as the simulations measure it (`pad_coverage`), and a window is
  re-simulated when its pads proved too short.
- Windows with the same signature (arrival-rate bucket, mean input and output length buckets, and whether the
  traffic just before and after the window runs at a like rate): the first few are simulated, the later ones reuse
  their mean (one window's figures carry its own noise), so the number of simulations grows with the variety of
  load, not with the trace length. The neighbour terms keep a
  cold start (the trace's first window, a window after a lull) or a drain (the last window) from standing in for
  windows in steady traffic.
- Idle power for unused capacity: a fluid queue of busy replica-seconds per window (work beyond a window's capacity
  carries into the next window; what is left of the capacity is idle). Busy time is measured on the window's own
  requests, like energy: the pads' edge requests decode in a filling or draining batch and would overstate it.
- Error bars: the spread of per-window J/request, as the standard error of the total (N x sd / sqrt(windows)).

Scenario:
    A week of production traffic arrives in minute windows. A quiet night minute runs small batches, so each
    decode token carries a large share of the step's base cost and the GPU idles between bursts; a busy afternoon
    minute runs large batches that amortize the step and leave no idle time. The estimate follows both.

Per request with I prompt and O output tokens (continuous batching: prefill emits the first token):
    E_request ~= P_j(I) + c_j x C + u_j x D,   D = O - 1 decode steps,   C = D I + D (D - 1) / 2 context tokens read
where P_j is the prefill alone and c_j the per-context-token decode cost, both from the cost model, and u_j is the
measured per-decode-token base cost at the window's load (the same form with seconds gives the busy time). A step's
longest-context term (`decode_max_ctx_tokens`) is shared by its batch like the base cost, so it is part of u_j.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.cost import CostModel
from tokenjoule.sim.policies import CONTINUOUS_MAX_NUM_BATCHED_TOKENS
from tokenjoule.sim.project.seats import SeatModel, base_per_decode_step
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.schema import Trace

logger = logging.getLogger(__name__)

# A window is re-simulated when its requests hold a seat longer than the pad; the new pad has this much headroom.
_PAD_HEADROOM = 1.25
# A pad's arrival rate counts as unlike its window's past this ratio either way (coarse: few requests fill a pad).
_NEIGHBOUR_RATIO = 4.0

_TERMS = ("n", "sum_input", "sum_output", "prefill_j", "prefill_s", "decode_steps", "context_tokens", "rejected")


@dataclass(frozen=True, slots=True)
class LoadAwareConfig:
    """How the load-aware estimate windows and caches.

    Attributes:
        window_s: window length (s).
        pad_s: seconds of requests before and after a window simulated with it (warm batch), not measured; the
            least pad: it grows while simulations show requests holding a batch seat for longer (see pad_coverage).
        rate_ratio: width of an arrival-rate bucket, as a ratio (1.1: rates within ~10% share a simulation).
        mix_ratio: width of a mean-input and a mean-output bucket, as a ratio.
        max_sim_requests: most requests of one window simulated (the first ones); each pad holds at most a quarter.
        max_pad_s: the longest pad (s) the adaptive pad may grow to.
        pad_coverage: the pads cover this fraction of the simulated requests' seat time: the pad p is the smallest
            with mean((hold - p)+) <= (1 - pad_coverage) x mean(hold), hold = a request's scheduling-to-finish time.
        sims_per_signature: windows of one signature simulated (each priced by its own); later ones get their mean.
    """

    window_s: float = 60.0
    pad_s: float = 10.0
    rate_ratio: float = 1.1
    mix_ratio: float = 1.2
    max_sim_requests: int = 20_000
    max_pad_s: float = 600.0
    pad_coverage: float = 0.99
    sims_per_signature: int = 3

    def __post_init__(self) -> None:
        if not self.window_s > 0:
            raise ConfigError(f"--window-s {self.window_s:g}: must be > 0")
        if self.pad_s < 0:
            raise ConfigError(f"--pad-s {self.pad_s:g}: must be >= 0")
        if not self.rate_ratio > 1 or not self.mix_ratio > 1:
            raise ConfigError(f"rate_ratio={self.rate_ratio} and mix_ratio={self.mix_ratio} must be > 1")
        if self.max_sim_requests < 8:
            raise ConfigError(f"max_sim_requests={self.max_sim_requests} must be >= 8")
        if self.max_pad_s < self.pad_s:
            raise ConfigError(f"--pad-s {self.pad_s:g}: must be <= {self.max_pad_s:g} s, the longest pad a window "
                              "may grow to")
        if not 0.0 < self.pad_coverage < 1.0:
            raise ConfigError(f"pad_coverage={self.pad_coverage} must be in (0, 1)")
        if self.sims_per_signature < 1:
            raise ConfigError(f"sims_per_signature={self.sims_per_signature} must be >= 1")


@dataclass(frozen=True, slots=True)
class Operating:
    """Measured load-dependent terms for one signature: base cost per decode token, and the requests' tail.

    Attributes:
        u_j: energy per decode token beyond the context term (J).
        u_s: busy replica-seconds per decode token beyond the context term (s).
        tail_s: how long the simulated run outlasts its last arrival (s).
    """

    u_j: float
    u_s: float
    tail_s: float


@dataclass(frozen=True, slots=True)
class LoadAwareEstimate:
    """The load-aware estimate.

    Attributes:
        energy_j: GPU energy, busy + idle (J).
        err_j: standard error of energy_j from the spread of per-window J/request (J).
        busy_j: energy of iterations (J).
        idle_j: idle power x unused replica-seconds (J).
        requests: requests served.
        rejected: requests the server can never run (as the simulator rejects them).
        windows: windows from t=0 to the last arrival.
        windows_with_requests: windows holding at least one request.
        simulations: short simulations run (cache misses).
        simulated_requests: requests simulated in them, pads included.
        duration_s: estimated run length (last arrival + tail + backlog).
        utilization: 1 - idle replica-seconds / (duration x replicas).
        window_s: window length (s).
        replicas: replicas.
        idle_power_w: idle power per replica (W).
        pad_s: the pad the simulations ended with (s): the configured least pad, or longer (see LoadAwareConfig).
    """

    energy_j: float
    err_j: float
    busy_j: float
    idle_j: float
    requests: int
    rejected: int
    windows: int
    windows_with_requests: int
    simulations: int
    simulated_requests: int
    duration_s: float
    utilization: float
    window_s: float
    replicas: int
    idle_power_w: float
    pad_s: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["j_per_request"] = self.energy_j / self.requests if self.requests else None
        out["rel_err"] = self.err_j / self.energy_j if self.energy_j else None
        return out


def rejected_mask(input_tokens: np.ndarray, output_tokens: np.ndarray, config: SimConfig,
                  kv_capacity_tokens: int) -> np.ndarray:
    """Requests the simulator rejects: empty ones, KV that can never fit, and (continuous) too long to prefill."""
    i, o = np.asarray(input_tokens, np.int64), np.asarray(output_tokens, np.int64)
    blocks = kv_capacity_tokens // config.block_size
    bad = (i < 1) | (o < 1) | (-(-(i + o) // config.block_size) > blocks)
    if config.policy == "continuous":
        bad |= i + o - 1 > (config.max_num_batched_tokens or CONTINUOUS_MAX_NUM_BATCHED_TOKENS)
    return bad


class WindowSums:
    """Per-window sums of the requests' own terms (`_TERMS`): what the estimate needs from every request.

    Batches come in arrival order; the sums of separate stretches of a trace (shards) add up with `merge`, to those
    of one pass over the whole trace up to float round-off (the counts and token sums exactly).

    Args:
        seats: the per-request cost terms.
        sim: the serving configuration (which requests it rejects).
        kv_capacity_tokens: KV capacity of a replica (tokens).
        window_s: window length (s).
    """

    def __init__(self, seats: SeatModel, sim: SimConfig, kv_capacity_tokens: int, window_s: float) -> None:
        self.seats, self.sim, self.kv_capacity_tokens, self.window_s = seats, sim, kv_capacity_tokens, window_s
        self.sums = np.zeros((0, len(_TERMS)))
        self.last_arrival_s = 0.0

    def add(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """Add a batch (arrivals sorted, seconds from the trace start)."""
        if not len(arrival_s):
            return
        if arrival_s[0] < 0 or arrival_s[0] < self.last_arrival_s:
            raise ConfigError(f"load-aware projection needs arrivals >= 0 in order (got {arrival_s[0]} after "
                              f"{self.last_arrival_s})")
        k = np.floor(np.asarray(arrival_s) / self.window_s).astype(np.int64)
        self._grow(int(k[-1]) + 1)
        bad = rejected_mask(input_tokens, output_tokens, self.sim, self.kv_capacity_tokens)
        good = ~bad
        terms = self.seats.terms(input_tokens[good], output_tokens[good])
        kg, n = k[good], len(self.sums)
        cols = {"n": np.ones(len(kg)), "sum_input": input_tokens[good], "sum_output": output_tokens[good], **terms}
        for j, name in enumerate(_TERMS[:-1]):
            self.sums[:, j] += np.bincount(kg, weights=cols[name], minlength=n)
        self.sums[:, -1] += np.bincount(k[bad], minlength=n)
        self.last_arrival_s = float(arrival_s[-1])

    def merge(self, other: WindowSums) -> None:
        """Add the sums of another stretch of the same trace (in any order)."""
        self._grow(len(other.sums))
        self.sums[:len(other.sums)] += other.sums
        self.last_arrival_s = max(self.last_arrival_s, other.last_arrival_s)

    def _grow(self, n: int) -> None:
        if n > len(self.sums):
            self.sums = np.vstack([self.sums, np.zeros((n - len(self.sums), len(_TERMS)))])


class ArrivalBuffer:
    """The streamed requests a projection still needs: rows [start, stop) of the trace, in arrival order.

    Rows are named by their index in the whole trace; `index` counts the rows before a time, never fewer than
    `start` (the rows dropped are before it).
    """

    def __init__(self) -> None:
        self.start = 0
        self.arrival_s = np.zeros(0)
        self.input_tokens, self.output_tokens = np.zeros(0, np.int64), np.zeros(0, np.int64)

    @property
    def stop(self) -> int:
        """One past the last row held."""
        return self.start + len(self.arrival_s)

    def extend(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """Append the next batch."""
        self.arrival_s, self.input_tokens, self.output_tokens = (
            np.concatenate([b, x]) for b, x in zip((self.arrival_s, self.input_tokens, self.output_tokens),
                                                    (arrival_s, input_tokens, output_tokens), strict=True))

    def index(self, times_s: list[float]) -> np.ndarray:
        """For each time, the index of the first row arriving at or after it (at least `start`)."""
        return self.start + np.searchsorted(self.arrival_s, times_s, side="left")

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [start, stop) as (arrival_s, input_tokens, output_tokens)."""
        sel = slice(start - self.start, stop - self.start)
        return self.arrival_s[sel], self.input_tokens[sel], self.output_tokens[sel]

    def drop_before(self, time_s: float) -> None:
        """Forget the rows arriving before `time_s`."""
        cut = int(self.index([time_s])[0]) - self.start
        if cut:
            self.arrival_s, self.input_tokens, self.output_tokens = (
                b[cut:] for b in (self.arrival_s, self.input_tokens, self.output_tokens))
            self.start += cut


@dataclass(frozen=True, slots=True)
class SampleRows:
    """Which rows of the trace a window's simulation replays.

    Attributes:
        window: the window's index.
        start: first row (the before-pad's first).
        lo: the window's first own row.
        hi: one past its last own row.
        stop: one past the last row (the after-pad's last).
    """

    window: int
    start: int
    lo: int
    hi: int
    stop: int

    def read(self, rows: Rows) -> tuple[Trace, np.ndarray]:
        """The rows as a trace re-zeroed at its first arrival, and which of them are the window's own."""
        arr, inp, out = rows.take(self.start, self.stop)
        own = np.zeros(self.stop - self.start, bool)
        own[self.lo - self.start:self.hi - self.start] = True
        return Trace.from_columns(arr - arr[0], inp, out, source=f"window {self.window}"), own


class Rows(Protocol):
    """The trace's rows in arrival order, as a window walk reads them (`ArrivalBuffer` while streaming)."""

    start: int

    @property
    def stop(self) -> int:
        """One past the last row that can be read."""

    def index(self, times_s: list[float]) -> np.ndarray:
        """For each time, the index of the first row arriving at or after it (at least `start`)."""

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [start, stop) as (arrival_s, input_tokens, output_tokens)."""

    def drop_before(self, time_s: float) -> None:
        """Rows before `time_s` will not be read again (`start` moves past them)."""


# simulate(k) -> (operating point, seconds its own requests hold a seat, requests simulated)
WindowSimulator = Callable[[int], tuple[Operating, float, int]]


class LoadAwareProjector:
    """Streams batches into per-window sums; simulates a window when its signature is new.

    Args:
        cost: the cost model (as the replay's).
        sim: the serving configuration (policy, replicas, ...) the short simulations use.
        config: windows and cache.
        terms: per-window sums already added up (a sharded pass), instead of the batches `add` streams in.
        rows: the trace's rows those sums came from, read where the windows need them (with `terms`).
    """

    def __init__(self, cost: CostModel, sim: SimConfig, config: LoadAwareConfig, terms: WindowSums | None = None,
                 rows: Rows | None = None) -> None:
        self.cost, self.config = cost, config
        self.sim = dataclasses.replace(sim, arrival_window_s=None, rate_scale=1.0, record_events=False)
        if terms is None:
            seats = SeatModel.of(cost, self.sim.max_batch if self.sim.policy == "static" else self.sim.max_num_seqs)
            terms = WindowSums(seats, self.sim, int(cost.kv_capacity_tokens), config.window_s)
        self.terms, self.seats = terms, terms.seats
        self.rows: Rows = rows if rows is not None else ArrivalBuffer()
        self.ops: list[Operating | None] = []
        self.cache: dict[tuple[int, ...], list[Operating]] = {}
        self.simulated_requests = 0
        self.simulations = 0
        self.pad_s = config.pad_s  # grows (never shrinks) to cover the seat time the simulations measure

    @property
    def sums(self) -> np.ndarray:
        """Per-window sums, shape (windows, len(_TERMS))."""
        return self.terms.sums

    @property
    def last_arrival_s(self) -> float:
        """The last arrival added (s)."""
        return self.terms.last_arrival_s

    def add(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """Feed a batch (arrivals sorted, seconds from the trace start)."""
        if not len(arrival_s):
            return
        self.terms.add(arrival_s, input_tokens, output_tokens)
        self.rows.extend(arrival_s, input_tokens, output_tokens)
        w = self.config.window_s
        # A window is final once its after-pad has arrived; _finalize may lengthen the pad, so test again each time.
        while len(self.ops) < len(self.sums) and self.last_arrival_s >= (len(self.ops) + 1) * w + self.pad_s:
            self._finalize(len(self.ops), False, self.simulate_here)

    def result(self) -> LoadAwareEstimate:
        """Finish the remaining windows and total the estimate."""
        self.finish_windows(self.simulate_here)
        return self.total()

    def finish_windows(self, simulate: WindowSimulator) -> None:
        """Price every window not priced yet, in order, with `simulate` running the simulations they need."""
        if not len(self.sums):
            raise ConfigError("load-aware projection: no requests")
        while len(self.ops) < len(self.sums):
            self._finalize(len(self.ops), len(self.ops) == len(self.sums) - 1, simulate)

    def fork(self) -> LoadAwareProjector:
        """A copy whose windows can be priced ahead (to plan simulations) without touching this one."""
        twin = copy.copy(self)
        twin.ops, twin.rows = list(self.ops), copy.copy(self.rows)
        twin.cache = {key: list(seen) for key, seen in self.cache.items()}
        return twin

    def simulate_here(self, k: int) -> tuple[Operating, float, int]:
        """Simulate window k in this process: its operating point, its requests' seat time, requests simulated."""
        trace, own = self.sample_rows(k).read(self.rows)
        op, hold_s = operating_point(self.sim, self.cost, self.seats, self.config.pad_coverage, trace, own)
        logger.debug("window %d: simulated %d requests, u_j=%.4g J, u_s=%.4g s", k, len(trace), op.u_j, op.u_s)
        return op, hold_s, len(trace)

    def _span(self, k: int, last: bool) -> float:
        w = self.config.window_s
        return max(self.last_arrival_s - k * w, 1e-3) if last else w

    def _finalize(self, k: int, last: bool, simulate: WindowSimulator) -> bool:
        """Price window k from the cache or a simulation; False (window left open) when the pad had to grow."""
        s = dict(zip(_TERMS, self.sums[k], strict=True))
        op = None
        if s["n"] > 0:
            key = self._signature(k, s, last)
            seen = self.cache.setdefault(key, [])
            if len(seen) < self.config.sims_per_signature:
                op, hold_s, simulated = simulate(k)
                self.simulations += 1
                self.simulated_requests += simulated
                if hold_s > self.pad_s and self.pad_s < self.config.max_pad_s:
                    self.pad_s = min(_PAD_HEADROOM * hold_s, self.config.max_pad_s)
                    logger.info("window %d: requests hold a seat for ~%.1f s; pads now %.1f s, re-simulating",
                                k, hold_s, self.pad_s)
                    return False
                seen.append(op)
            else:
                op = Operating(*np.mean([dataclasses.astuple(o) for o in seen], axis=0).tolist())
        self.ops.append(op)
        self.rows.drop_before((k + 1) * self.config.window_s - self.pad_s)
        return True

    def _signature(self, k: int, s: dict[str, float], last: bool) -> tuple[int, ...]:
        """Cache key: rate and mean-length buckets, and how the traffic in each pad compares with the window's.

        The neighbour terms are log2(pad's arrival rate / window's), rounded and clipped: 0 in steady traffic, the
        lowest bucket where a pad is empty (the trace's start and end) so that a cold start or a drain, priced by
        its own simulation, never stands in for a warm window.
        """
        c, w, pad = self.config, self.config.window_s, self.pad_s
        key = (round(math.log(s["n"] / self._span(k, last)) / math.log(c.rate_ratio)),
               round(math.log(max(s["sum_input"] / s["n"], 1.0)) / math.log(c.mix_ratio)),
               round(math.log(max(s["sum_output"] / s["n"], 1.0)) / math.log(c.mix_ratio)))
        if pad <= 0:
            return key
        b0, lo, hi, a1 = self.rows.index([k * w - pad, k * w, (k + 1) * w, (k + 1) * w + pad])
        own_rate = max(int(hi - lo), 1) / self._span(k, last)

        def bucket(count: int) -> int:
            ratio = count / pad / own_rate
            return -1 if ratio < 1 / _NEIGHBOUR_RATIO else int(ratio > _NEIGHBOUR_RATIO)

        return (*key, bucket(int(lo - b0)), bucket(int(a1 - hi)))

    def sample_rows(self, k: int) -> SampleRows:
        """The rows simulated for window k: its first requests, with up to pad_s of requests on each side."""
        c, w, rows = self.config, self.config.window_s, self.rows
        lo, hi = (int(i) for i in rows.index([k * w, (k + 1) * w]))
        hi = min(hi, lo + c.max_sim_requests)
        own_end = (float(rows.take(hi, hi + 1)[0][0]) if hi < rows.stop and hi - lo == c.max_sim_requests
                   else (k + 1) * w)
        pad = c.max_sim_requests // 4
        start = max(int(rows.index([k * w - self.pad_s])[0]), lo - pad)
        stop = min(int(rows.index([own_end + self.pad_s])[0]), hi + pad)
        return SampleRows(k, start, lo, hi, stop)

    def total(self) -> LoadAwareEstimate:
        """Total the estimate over the priced windows."""
        t = {name: self.sums[:, j] for j, name in enumerate(_TERMS)}
        u_j = np.array([op.u_j if op else 0.0 for op in self.ops])
        u_s = np.array([op.u_s if op else 0.0 for op in self.ops])
        (_, cj), (_, cs) = self.seats.seat_j, self.seats.seat_s
        busy_j = t["prefill_j"] + cj * t["context_tokens"] + u_j * t["decode_steps"]
        busy_s = t["prefill_s"] + cs * t["context_tokens"] + u_s * t["decode_steps"]
        last_op = next((op for op in reversed(self.ops) if op), None)
        tail = last_op.tail_s if last_op else 0.0
        least_s = t["prefill_s"] + cs * t["context_tokens"] + self.seats.full_batch_s * t["decode_steps"]
        idle_s, duration = self._idle(busy_s, np.minimum(busy_s, least_s), tail)
        idle_w = float(self.cost.idle_power_w)
        window_j = busy_j + idle_w * idle_s
        energy = float(window_j.sum())
        n = t["n"]
        has = n > 0
        per_req = window_j[has] / n[has]
        mean = energy / n.sum()
        var = float((n[has] * (per_req - mean) ** 2).sum() / n.sum())
        err = float(n.sum()) * math.sqrt(var / max(1, int(has.sum())))
        reps = self.sim.replicas
        return LoadAwareEstimate(energy, err, float(busy_j.sum()), idle_w * float(idle_s.sum()), int(n.sum()),
                                 int(t["rejected"].sum()), len(n), int(has.sum()), self.simulations,
                                 self.simulated_requests, duration, 1.0 - float(idle_s.sum()) / (duration * reps),
                                 self.config.window_s, reps, idle_w, self.pad_s)

    def _idle(self, busy_s: np.ndarray, least_s: np.ndarray, tail_s: float) -> tuple[np.ndarray, float]:
        """Unused replica-seconds per window, and the run length.

        A fluid queue with two backlogs. Idle: a window's requests' busy time is priced by arrival, but those that
        arrive late in it decode into the next window, so all of its busy time beyond the window's capacity carries
        over, and a window is idle only for capacity that neither its own nor carried work fills. Run length: only
        work that cannot fit even at full batches (`least_s`) delays the end past the last arrival (near saturation
        a server busy all the time with small batches absorbs a few percent more load by batching more, not by
        falling behind).
        """
        reps, w = self.sim.replicas, self.config.window_s
        idle = np.zeros(len(busy_s))
        carried = late = 0.0
        for k in range(len(busy_s)):
            cap = reps * (w if k < len(busy_s) - 1 else self.last_arrival_s + tail_s - k * w)
            idle[k] = max(0.0, cap - carried - busy_s[k])
            carried = max(0.0, carried + busy_s[k] - cap)
            late = max(0.0, late + least_s[k] - cap)
        return idle, self.last_arrival_s + tail_s + late / reps


def operating_point(sim: SimConfig, cost: CostModel, seats: SeatModel, pad_coverage: float, trace: Trace,
                    own: np.ndarray) -> tuple[Operating, float]:
    """Simulate a window's sample and measure its load-dependent terms; a pure function of its inputs.

    Args:
        sim: the serving configuration.
        cost: the cost model.
        seats: the per-request cost terms.
        pad_coverage: share of the seat time the pads must cover (see `LoadAwareConfig`).
        trace: the window's requests with their pads (`LoadAwareProjector.sample`).
        own: which of them are the window's own.

    Returns:
        The operating point, and the pad (s) the own requests' seat times call for.
    """
    res = run(sim, trace, cost)
    table = res.requests
    done = table.column("status").to_numpy(zero_copy_only=False) == "finished"
    energy = table.column("gpu_energy_attributed_j").to_numpy()
    inp, out = trace.column("input_tokens"), trace.column("output_tokens")
    mine = own & done
    t_own = seats.terms(inp[mine], out[mine])
    t_all = seats.terms(inp[done], out[done])
    s = res.summary
    busy_s = (s.get("utilization") or 0.0) * s["duration_s"] * sim.replicas
    u_j = base_per_decode_step(float(energy[mine].sum()), t_own, seats.seat_j)
    # Busy time is known only for the whole simulation, whose pads' edge requests decode in a filling or draining
    # batch; scale it to the window's own requests by the ratio of their energies (the same batches).
    u_j_all = base_per_decode_step(float(energy[done].sum()), t_all, seats.seat_j)
    u_s = base_per_decode_step(busy_s, t_all, seats.seat_s, prefix="prefill_s") * (
        u_j / u_j_all if u_j > 0 and u_j_all > 0 else 1.0)
    tail = max(0.0, float(s["duration_s"]) - float(trace.column("arrival_s")[-1]))
    hold_s = table.column("e2e_s").to_numpy()[mine] - table.column("queue_s").to_numpy()[mine]
    return Operating(u_j, u_s, tail), cover_s(hold_s, pad_coverage)


def cover_s(hold_s: np.ndarray, coverage: float) -> float:
    """Smallest p >= 0 with sum((hold - p)+) <= (1 - coverage) x sum(hold): a pad that covers that share of seat time.

    Args:
        hold_s: seconds each request held a batch seat (scheduling to finish).
        coverage: share of the total seat time the pad must cover, in (0, 1).

    Returns:
        The pad (s); 0 for no requests.
    """
    r = np.sort(np.asarray(hold_s, np.float64))[::-1]
    if not len(r) or r[0] <= 0:
        return 0.0
    top = np.cumsum(r)
    budget = (1.0 - coverage) * top[-1]
    # excess(p) = sum((r - p)+) is piecewise linear; at p = r[j] the j larger values exceed it by top[j-1] - j r[j]
    j = np.arange(len(r))
    at_knots = np.concatenate([[0.0], top[:-1]]) - j * r
    m = int(np.searchsorted(at_knots, budget, side="right"))  # the m largest exceed the answer
    return max(0.0, float((top[m - 1] - budget) / m))
