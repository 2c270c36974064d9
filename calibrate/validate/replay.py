"""Replay a trace slice on the real engine, in real time, with the energy meter running over the whole scenario.

    engine = build_engine(spec, runner_config, policy="continuous", max_num_seqs=256, max_num_batched_tokens=8192)
    result = replay(engine, requests, meter, name="conv_x1")        # online: arrival times honoured
    result = replay(engine, requests, meter, static_batch=8)        # offline: batches of 8, all at t=0

Online mode feeds each request to the engine at its arrival time (the loop checks arrivals at every iteration
boundary, as the simulator admits arrivals at iteration boundaries) and sleeps until the next arrival when the
engine is empty. Offline static mode hands the engine `static_batch` requests at a time, the next batch only once
the engine is empty (the simulator's static batching with every request arriving at t=0). The scheduling policy
matches the simulator's (`sim/policies.py`): "continuous" is prefill-first (vLLM V0: an iteration either prefills
newly admitted whole prompts or decodes every running sequence), "chunked" is the engine's own scheduler (decodes
first, the rest of a token budget to prefill chunks).

The window's edges sit on energy-counter steps (`calibrate/measure/edges.py`): it opens on a step after a moment of
idle and closes on the first step after the work, and the idle margins are taken out at the idle power measured
there; a plain counter difference is quantized by up to a counter period's energy at each edge (9% of a 1.1 s scenario
at 300 W). The plain difference is kept beside it (`meta["energy_raw_j"]`).

Prompt token ids are drawn before the window opens, so no host work of the harness itself sits inside it. Torch is
never imported here: the engine is built by `build_engine`, which imports it lazily.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokenjoule.calibrate.measure.edges import close_at_tick, open_at_tick
from tokenjoule.calibrate.measure.meters import EnergyMeter
from tokenjoule.kernels.scheduler import ScheduledBatch, Scheduler
from tokenjoule.kernels.shape import IterationShape

logger = logging.getLogger(__name__)

POLICIES = ("continuous", "chunked")


class PrefillFirstScheduler(Scheduler):
    """vLLM V0 continuous batching on the engine: admit and prefill whole prompts first, else decode everyone.

    An iteration admits waiting sequences in arrival order while the batch has fewer than `max_num_seqs`
    sequences, their prompts sum to at most `max_num_batched_tokens` and their KV blocks fit; if it admitted any, it
    prefills just them. Otherwise it decodes one token of every running sequence (preempting the most recent by
    recompute when a decode cannot get a block). This is `sim.policies.ContinuousBatching`.
    """

    def schedule(self) -> ScheduledBatch:
        """Plan the next iteration: a prefill-only iteration if any prompt can be admitted, else a decode step."""
        prefill = []
        budget, seats = self.max_num_batched_tokens, self.max_num_seqs - len(self.running)
        while self.waiting and seats > 0:
            seq = self.waiting[0]
            n = seq.num_uncached_tokens
            if n > budget or not self.block_manager.can_allocate(n):
                break
            self._admit(seq, n)
            prefill.append((seq, n))
            budget, seats = budget - n, seats - 1
        if prefill:
            return ScheduledBatch(prefill=tuple(prefill))
        return ScheduledBatch(decode=tuple(self._schedule_decodes()))


def use_policy(engine: Any, policy: str, max_num_seqs: int, max_num_batched_tokens: int) -> None:
    """Give an idle engine a fresh scheduler for `policy` with the simulator's limits (its runner is kept)."""
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {POLICIES}")
    if engine.has_unfinished:
        raise RuntimeError("the engine must be idle to change its scheduling policy")
    limits = engine.runner.config
    if max_num_seqs > limits.max_num_seqs or max_num_batched_tokens > limits.max_num_batched_tokens:
        raise ValueError(f"max_num_seqs={max_num_seqs} / max_num_batched_tokens={max_num_batched_tokens} exceed "
                         f"the runner's {limits.max_num_seqs} / {limits.max_num_batched_tokens}")
    cls = PrefillFirstScheduler if policy == "continuous" else Scheduler
    engine.scheduler = cls(engine.runner.block_manager, max_num_seqs, max_num_batched_tokens)


def build_engine(spec: Any, runner_config: Any, policy: str = "chunked", max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.perf_counter) -> Any:
    """An `Engine` (imports torch) whose scheduler follows `policy` with the given limits (default: the runner's)."""
    from tokenjoule.kernels.engine import Engine

    engine = Engine(spec, runner_config, seed=seed, clock=clock)
    use_policy(engine, policy, max_num_seqs or runner_config.max_num_seqs,
               max_num_batched_tokens or runner_config.max_num_batched_tokens)
    return engine


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """One request to replay.

    Attributes:
        request_id: id (kept in the results).
        arrival_s: arrival time, seconds from the scenario start (0 for offline batches).
        input_tokens: prompt length.
        output_tokens: tokens to generate.
    """

    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replayed scenario measured. Times are seconds from the scenario start (the window's begin).

    Attributes:
        name: scenario name.
        requests: one dict per finished request (request_id, arrival_s, first_token_s, finish_s, input_tokens,
            output_tokens).
        iterations: one dict per engine iteration (start_s, run_s, host_s and the iteration's shape features).
        duration_s: the metered window (start to the last completion).
        energy_j: GPU energy of the window (None with a time-only meter).
        clock_start_s: the meter clock at the scenario start (to line up a power timeline).
        completed: False when the scenario hit its wall-clock limit before every request finished.
        idle_s: time spent sleeping with an empty engine.
        meta: extra figures: `window_end_s` (the last completion), `energy_aligned` (whether the window's edges sat
            on counter steps), `energy_bound_j` (their timing bound), `energy_raw_j` (the plain counter difference),
            `idle_power_w` (used for the margins).
    """

    name: str
    requests: list[dict[str, Any]]
    iterations: list[dict[str, Any]]
    duration_s: float
    energy_j: float | None
    clock_start_s: float
    completed: bool
    idle_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def shape_columns(shape: IterationShape) -> dict[str, int]:
    """An iteration's shape features as `iterations.parquet` columns (what the cost model prices)."""
    return {"prefill_tokens": shape.prefill_tokens, "prefill_seqs": shape.prefill_seqs,
            "decode_seqs": shape.decode_seqs, "new_tokens": shape.new_tokens,
            "prefill_attn_pairs": shape.prefill_attn_pairs, "prefill_ctx_tokens": shape.prefill_ctx_tokens,
            "decode_ctx_tokens": shape.decode_ctx_tokens}


def _shape_row(batch: ScheduledBatch) -> dict[str, Any]:
    shape = batch.to_shape()
    # the longest decode context: with the sum, it tells a ragged batch from a uniform one (docs/validation.md)
    return {**shape_columns(shape), "decode_max_ctx_tokens": shape.decode_max_ctx_tokens}


def _token_ids(requests: Sequence[ReplayRequest], vocab_size: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab_size, r.input_tokens).tolist() for r in requests]


def replay(engine: Any, requests: Sequence[ReplayRequest], meter: EnergyMeter, *, name: str = "scenario",
           static_batch: int | None = None, max_wall_s: float = float("inf"), seed: int = 0,
           sleep: Callable[[float], None] = time.sleep) -> ReplayResult:
    """Replay `requests` on an idle `engine` with `meter` open over the whole scenario.

    Args:
        engine: an idle `kernels.engine.Engine` (its scheduler set by `use_policy`).
        requests: the requests, in arrival order.
        meter: the energy meter (its window spans the scenario; it synchronizes CUDA at both ends).
        name: scenario name (also the meter window's key).
        static_batch: offline static batching: this many requests at a time, each batch once the engine is empty.
        max_wall_s: stop feeding and stepping after this long (the result says `completed=False`).
        seed: seed of the prompt token ids.
        sleep: sleep function while the engine is empty (tests pass a fake clock's).

    Returns:
        The ReplayResult.
    """
    if engine.has_unfinished:
        raise RuntimeError("replay needs an idle engine")
    arrivals = [r.arrival_s for r in requests]
    if any(b < a for a, b in zip(arrivals, arrivals[1:], strict=False)):
        raise ValueError(f"scenario {name}: requests must be in arrival order")
    if static_batch is not None and static_batch < 1:
        raise ValueError(f"static_batch={static_batch} must be >= 1")
    if isinstance(engine.scheduler, PrefillFirstScheduler):  # a prompt over the budget could never be scheduled
        budget = engine.scheduler.max_num_batched_tokens
        too_long = [r.request_id for r in requests if r.input_tokens + r.output_tokens - 1 > budget]
        if too_long:
            raise ValueError(f"scenario {name}: requests {too_long[:5]} exceed the continuous policy's "
                             f"max_num_batched_tokens={budget} (prompt + output - 1, as after a preemption)")
    ids = _token_ids(requests, engine.spec.vocab_size, seed)
    by_id = {r.request_id: r for r in requests}
    iterations: list[dict[str, Any]] = []
    finished: list[Any] = []
    idle_s, nxt, completed = 0.0, 0, True
    window = open_at_tick(meter, sleep)
    clock_start = window.start_s
    t0 = engine.now_s()
    while nxt < len(requests) or engine.has_unfinished:
        now = engine.now_s() - t0
        if now > max_wall_s:
            completed = False
            break
        nxt = _admit(engine, requests, ids, nxt, now, t0, static_batch)
        if not engine.has_unfinished:
            wait = requests[nxt].arrival_s - (engine.now_s() - t0)
            if wait > 0:
                sleep(wait)
                idle_s += wait
            continue
        a = engine.now_s()
        batch = engine.scheduler.schedule()
        row = _shape_row(batch)
        b = engine.now_s()
        tokens = engine.runner.run(batch)
        c = engine.now_s()
        finished.extend(engine.postprocess(batch, tokens))
        d = engine.now_s()
        row.update(start_s=a - t0, run_s=c - b, host_s=(b - a) + (d - c))
        iterations.append(row)
    measurement = close_at_tick(meter, window, sleep)
    end = max((f.finish_s for f in finished), default=engine.now_s()) - t0
    rows = [{"request_id": f.request_id, "arrival_s": by_id[f.request_id].arrival_s,
             "first_token_s": f.first_token_s - t0, "finish_s": f.finish_s - t0, "input_tokens": f.prompt_tokens,
             "output_tokens": f.output_tokens} for f in finished]
    if not completed:
        _drain(engine)
    logger.info("scenario %s: %d/%d requests, %d iterations, %.1f s (window %.1f s), %s J, idle %.1f s", name,
                len(rows), len(requests), len(iterations), end, measurement.time_s, measurement.energy_j, idle_s)
    return ReplayResult(name, rows, iterations, measurement.time_s, measurement.energy_j, clock_start, completed,
                        idle_s, {"window_end_s": end, "energy_aligned": measurement.aligned,
                                 "energy_bound_j": measurement.bound_j, "energy_raw_j": measurement.raw_energy_j,
                                 "idle_power_w": measurement.idle_power_w})


def _admit(engine: Any, requests: Sequence[ReplayRequest], ids: list[list[int]], nxt: int, now: float, t0: float,
           static_batch: int | None) -> int:
    """Hand the engine every request due now (online) or the next batch when it is empty (static)."""
    if static_batch is not None:
        if engine.has_unfinished:
            return nxt
        stop = min(len(requests), nxt + static_batch)
    else:
        stop = nxt
        while stop < len(requests) and requests[stop].arrival_s <= now:
            stop += 1
    for i in range(nxt, stop):
        r = requests[i]
        engine.scheduler.add(engine.make_sequence(r.request_id, r.input_tokens, r.output_tokens, token_ids=ids[i],
                                                  arrival_s=t0 + r.arrival_s))
    return stop


def _drain(engine: Any) -> None:
    """Drop every waiting and running sequence (after a scenario was cut short), freeing their blocks."""
    sched = engine.scheduler
    for seq in list(sched.running):
        sched.finish(seq)
    sched.waiting.clear()
