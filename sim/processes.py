"""The SimPy serving cluster: clients arrive from a trace, a router picks a replica, replicas run batches.

Covers:
- One process for the arrivals (which routes each request) and one per replica; never one per token.
- A replica decodes a constant batch for many steps with a single timeout (closed-form cost), and an arrival that
  the policy would admit cuts the stretch at the first iteration boundary after it.

Scenario:
    Requests arrive at their trace timestamps. The router sends each one to a replica (round-robin, fewest
    outstanding requests, or seeded random). A replica asks its batching policy what to run next (a prefill
    iteration, a decode stretch, a padded static batch) and holds the GPU for the time the cost model gives,
    booking the energy to the requests that were processed. Idle replicas sleep until a request arrives.
    The policy only decides; these processes carry its plan out through the replica's actions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import simpy

from tokenjoule.kernels.spec import ConfigError
from tokenjoule.sim.notes import CONTEXT_REJECT
from tokenjoule.sim.policies import DECODE, DecodeStretch, Iteration, Preempt, StaticBatch, Wait
from tokenjoule.sim.replica import Replica, RequestState

ROUTERS = ("round-robin", "least-outstanding", "random")


class Router:
    """Sends each admissible request to a replica; rejects requests no replica can ever serve.

    Args:
        replicas: the replicas.
        kind: one of ROUTERS.
        rng: random source for the "random" router.
        max_context_tokens: the model's context length (prompt plus output), or None where unknown (not checked).
    """

    def __init__(self, replicas: list[Replica], kind: str, rng: np.random.Generator,
                 max_context_tokens: int | None = None) -> None:
        if kind not in ROUTERS:
            raise ConfigError(f"unknown router {kind!r}; choose one of {', '.join(ROUTERS)}")
        self.replicas = replicas
        self.kind = kind
        self.rng = rng
        self.max_context_tokens = math.inf if max_context_tokens is None else max_context_tokens
        self._next = 0
        first = replicas[0]
        # the longest request (prompt plus output) nothing rejects: most arrivals need no more check than this
        self._serves_up_to = min(self.max_context_tokens, first.policy.max_request_tokens(first))

    def pick(self) -> Replica:
        """The replica for the next request."""
        if self.kind == "round-robin":
            rep = self.replicas[self._next]
            self._next = (self._next + 1) % len(self.replicas)
            return rep
        if self.kind == "least-outstanding":
            return min(self.replicas, key=lambda r: r.outstanding)
        return self.replicas[int(self.rng.integers(len(self.replicas)))]

    def dispatch(self, s: RequestState, now: float) -> None:
        """Reject the request with a reason, or submit it to the chosen replica."""
        if s.input_tokens >= 1 and s.output_tokens >= 1 and s.input_tokens + s.output_tokens <= self._serves_up_to:
            if self.kind == "round-robin":  # `pick`, written out for the default router
                rep = self.replicas[self._next]
                self._next = (self._next + 1) % len(self.replicas)
            else:
                rep = self.pick()
            rep.submit(s, now)  # no reason below applies
            return
        first = self.replicas[0]
        if s.input_tokens < 1 or s.output_tokens < 1:
            reason = "empty_request"
        elif s.input_tokens + s.output_tokens > self.max_context_tokens:
            reason = CONTEXT_REJECT
        else:
            reason = first.policy.reject_reason(s, first)
        if reason is None:
            self.pick().submit(s, now)
            return
        first.ledger.reject(s, reason)
        if first.log is not None:
            first.log.append(("reject", now, s.idx))


def arrivals(env: simpy.Environment, rows: Iterable[tuple[float, int, int]], router: Router,
             on_progress: Callable[[int], None] | None = None):
    """The clients: each request arrives at its trace time and is handed to the router.

    `rows` are (arrival_s, input_tokens, output_tokens) in arrival order (`Trace.iter_rows`).
    """
    dispatch, timeout, now = router.dispatch, env.timeout, env.now
    for idx, (arrival_s, input_tokens, output_tokens) in enumerate(rows):
        if arrival_s > now:
            delay = arrival_s - now
            yield timeout(delay)
            now += delay  # the clock now: SimPy's own arithmetic
        dispatch(RequestState(idx, arrival_s, input_tokens, output_tokens), now)
        if on_progress is not None and not idx % 4096:
            on_progress(idx)
    router.replicas[0].ledger.last_arrival_s = now


def replica(env: simpy.Environment, rep: Replica):
    """A replica: ask the policy what to run next, run it, repeat; sleep while there is nothing to do.

    A decode stretch (after the planned preemptions) decodes the constant batch with one timeout, to the next
    completion or KV limit; an arrival that the policy would admit cuts it at the first step boundary after it.
    """
    next_batch, start_stretch, finish_stretch = rep.policy.next_batch, rep.start_stretch, rep.finish_stretch
    start_iteration, finish_iteration = rep.start_iteration, rep.finish_iteration
    now = env.now  # the clock; the hot branches get it back from the replica rather than asking again
    while True:
        plan = next_batch(rep, now)
        if plan is DECODE and rep.running:  # the common plan, no preemption (below, written out)
            yield start_stretch(now)
            now = finish_stretch()
        elif plan is None:
            yield rep.sleep()
            now = env.now
        elif isinstance(plan, DecodeStretch):
            if plan.preempt:
                rep.preempt_newest(plan.preempt)
            if rep.running:
                yield start_stretch(now)  # a cut moves this wait to the earlier boundary (`Replica.submit`)
                now = finish_stretch()
            else:  # all preempted: nothing left to decode, wait for an arrival as an idle replica does
                yield rep.sleep()
                now = env.now
        elif isinstance(plan, Iteration):  # admit the planned requests, run one forward pass
            yield start_iteration(plan, now)
            now = finish_iteration()
        elif isinstance(plan, Preempt):
            rep.preempt_newest(plan.count)
        elif isinstance(plan, StaticBatch):
            yield from static_batch(env, rep, plan)
            now = env.now
        elif isinstance(plan, Wait):
            yield env.any_of([rep.sleep(), env.timeout(plan.until_s - env.now)])
            rep.end_sleep()
            now = env.now


def static_batch(env: simpy.Environment, rep: Replica, plan: StaticBatch):
    """A padded batch: prefill to the longest prompt, decode to the longest output, everyone returns at the end."""
    members, n = plan.members, len(plan.members)
    max_in = max(s.input_tokens for s in members)
    max_out = max(s.output_tokens for s in members)
    start = env.now
    rep.admit_static(members, start)
    # IterFeatures' fields, in order: a prefill of n prompts padded to max_in tokens
    time_s, energy_j = rep.cost.iteration_of(n * max_in, n * max_in * (max_in + 1) // 2, 0, 0, 0, n, 0)
    tally = rep.ledger.range_tally
    if tally is not None:
        tally.iteration(0, n * max_in, max_in, 0)
    yield env.timeout(time_s)
    rep.charge(start, time_s, energy_j)
    if rep.log is not None:
        rep.log.append(("prefill", start, tuple((s.idx, max_in) for s in members)))
    if rep.iterations is not None:
        rep.iterations.iteration(rep.idx, start, time_s, energy_j, n * max_in, n, 0)
    rep.static_prefill_done(members, energy_j, env.now)
    if max_out > 1:
        cost = rep.cost.decode_stretch(n, n * max_in, max_in)  # padded: every context is max_in at step 0
        start, time_s, energy_j = env.now, cost.time_s(max_out - 1), cost.energy_j(max_out - 1)
        if tally is not None:
            tally.decode(n, max_in, max_out - 1)
        yield env.timeout(time_s)
        rep.charge(start, time_s, energy_j)
        if rep.log is not None:
            rep.log.append(("decode", start, max_out - 1))
        if rep.iterations is not None:
            rep.iterations.stretch(rep.idx, start, max_out - 1, n, cost)
        rep.static_decode_done(members, energy_j)
    rep.finish_static(members, env.now)
