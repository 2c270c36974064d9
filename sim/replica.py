"""Mutable simulation state: one RequestState per live request, one Replica per model instance (queue, batch, KV).

The bookkeeping is lazy so that a decode stretch costs O(1) however large the batch: a decoding request records the
replica's step counter and per-seat energy counter when it joins, and settles the difference when it leaves. Every
decoding context grows by one a step, as the step counter does, so a request's context minus the counter is fixed
while it decodes: the longest context is a heap of those offsets, O(log n) a change.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import simpy

    from tokenjoule.sim.accounting import Ledger
    from tokenjoule.sim.cost import CostModel, StretchCost


class RequestState:
    """A request while it is simulated: progress counters plus a reference to its trace row.

    Attributes:
        idx: row index in the trace (the ledger's slot).
        arrival_s: arrival time (s).
        input_tokens: prompt length.
        output_tokens: tokens to generate.
        generated: tokens generated so far (kept across a recompute preemption).
        prefilled: tokens of the current prefill target already computed (chunked prefill).
        g_join: the replica's decode step counter when this request started decoding.
        gen_join: `generated` at that moment.
        seat_mark: the replica's per-seat energy counter at that moment (J).
        energy_j: energy attributed so far (J).
        preemptions: times preempted (recompute).
        start_s: when it was first scheduled (NaN before).
        first_token_s: when its first output token was produced (NaN before).
        stamp: decode-join counter, to discard stale heap entries after a preemption.
    """

    __slots__ = ("idx", "arrival_s", "input_tokens", "output_tokens", "generated", "prefilled", "g_join", "gen_join",
                 "seat_mark", "energy_j", "preemptions", "start_s", "first_token_s", "stamp")

    def __init__(self, idx: int, arrival_s: float, input_tokens: int, output_tokens: int) -> None:
        self.idx = idx
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.generated = 0
        self.prefilled = 0
        self.g_join = 0
        self.gen_join = 0
        self.seat_mark = 0.0
        self.energy_j = 0.0
        self.preemptions = 0
        self.start_s = float("nan")
        self.first_token_s = float("nan")
        self.stamp = -1

    @property
    def prefill_target(self) -> int:
        """Tokens a (re)prefill must compute: the prompt plus tokens generated before a preemption."""
        return self.input_tokens + self.generated


class Replica:
    """One model instance (tp GPUs): waiting queue, prefilling and decoding sets, KV tokens, energy counters.

    Attributes:
        idx: replica number.
        env: the SimPy environment.
        policy: the batching policy (see `policies.POLICIES`).
        cost: the cost model.
        ledger: where finished requests and energy go.
        block_tokens: tokens per KV block (vLLM's block_size).
        capacity_blocks: KV blocks this replica holds (the cost model's token capacity // block_tokens).
        log: optional (event, time_s, request_id_or_detail) list for tests and debugging.
    """

    def __init__(self, idx: int, env: simpy.Environment, policy: Any, cost: CostModel, ledger: Ledger,
                 block_tokens: int = 16, log: list | None = None) -> None:
        self.idx = idx
        self.env = env
        self.policy = policy
        self.cost = cost
        self.ledger = ledger
        self.log = log
        self.block_tokens = block_tokens
        self.capacity_blocks = int(cost.kv_capacity_tokens) // block_tokens
        self.waiting: deque[RequestState] = deque()
        self.prefilling: list[RequestState] = []
        self.running: dict[int, RequestState] = {}  # decode phase, in admission order (last = preemption victim)
        self._heap: list[tuple[int, int, RequestState]] = []  # (finish step, stamp, state)
        self._ctx_heap: list[tuple[int, int, RequestState]] = []  # (g - context, stamp, state): longest context first
        self._stamps = 0
        self.g = 0  # decode steps taken
        self.ctx_sum = 0  # KV tokens of the decoding requests at step g
        self.blocks_used = 0  # KV blocks held (decoding requests and prompts reserved for prefill)
        self._phase = [0] * block_tokens  # decoding requests by (context - g) mod block_tokens
        self.seat_j = 0.0  # cumulative energy per decode seat
        self.busy_s = 0.0
        self.busy_j = 0.0
        self.outstanding = 0
        self.process: simpy.Process | None = None
        self.wake: simpy.Event | None = None
        self.stretch: tuple[float, StretchCost, int] | None = None  # (start_s, cost, planned steps)
        self.cut_steps: int | None = None

    # ---- paged KV blocks --------------------------------------------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """KV blocks not held by any request."""
        return self.capacity_blocks - self.blocks_used

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.block_tokens)

    def new_blocks(self, k: int) -> int:
        """Blocks the decoding batch allocates over its next k steps.

        A sequence whose cache is exactly full at a step's start needs a fresh block for that step's token; the
        phase histogram says how many sequences are in that state at each step (it repeats every block_tokens steps).
        """
        bs, phase = self.block_tokens, self._phase
        p0 = -self.g % bs  # phase index of step 0; step j reads index p0 - j (cyclically)
        if k == 1:
            return phase[p0]
        full, rest = divmod(k, bs)
        n = full * len(self.running)
        if rest:
            lo = p0 - rest + 1
            n += sum(phase[lo:p0 + 1]) if lo >= 0 else sum(phase[:p0 + 1]) + sum(phase[bs + lo:])
        return n

    def max_decode_steps(self, free_blocks: int) -> int:
        """The most decode steps the batch can take before it needs more than `free_blocks` new blocks."""
        bs, phase = self.block_tokens, self._phase
        full, left = divmod(free_blocks, len(self.running))
        p0 = -self.g % bs
        needs = accumulate(phase[p0::-1] + phase[:p0:-1])  # new blocks by step, one period from step 0
        return full * bs + bisect_right(list(needs), left)

    # ---- queue and wake-ups ---------------------------------------------------------------------------------------
    def submit(self, s: RequestState, now: float) -> None:
        """Queue an arrived request; wake the replica, or cut its decode stretch if the policy would admit now."""
        self.waiting.append(s)
        self.outstanding += 1
        if self.log is not None:
            self.log.append(("arrive", now, s.idx))
        if self.wake is not None:
            self.wake.succeed()
            self.wake = None
        elif self.stretch is not None and self.cut_steps is None:
            self._maybe_cut(now)

    def _maybe_cut(self, now: float) -> None:
        start, cost, planned = self.stretch
        k = cost.steps_within(now - start)
        if k < planned and self.policy.admits_midstretch(self, self.free_blocks - self.new_blocks(k)):
            self.cut_steps = k
            self.process.interrupt("arrival")

    def sleep(self) -> simpy.Event:
        """An event that a new arrival triggers."""
        self.wake = self.env.event()
        return self.wake

    # ---- decoding set -------------------------------------------------------------------------------------------
    def steps_to_next_finish(self) -> int:
        """Decode steps until the first decoding request emits its last token."""
        heap = self._heap
        while heap[0][2].stamp != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] - self.g

    def max_ctx(self) -> int:
        """The longest context among the decoding requests at step g (0 when none decodes)."""
        heap = self._ctx_heap
        while heap and heap[0][2].stamp != heap[0][1]:
            heapq.heappop(heap)
        return self.g - heap[0][0] if heap else 0

    def start_decoding(self, s: RequestState) -> None:
        """Move a request whose prefill just produced a token into the decode set (or finish it)."""
        ctx = s.input_tokens + s.generated - 1  # its blocks were reserved at admission
        if s.generated >= s.output_tokens:
            self.finish(s, self.env.now)
            self.blocks_used -= self.blocks_for(ctx)
            return
        self._stamps += 1
        s.stamp, s.g_join, s.gen_join, s.seat_mark = self._stamps, self.g, s.generated, self.seat_j
        self.running[s.stamp] = s
        self.ctx_sum += ctx
        self._phase[(ctx - self.g) % self.block_tokens] += 1
        heapq.heappush(self._heap, (self.g + s.output_tokens - s.generated, s.stamp, s))
        heapq.heappush(self._ctx_heap, (self.g - ctx, s.stamp, s))

    def _leave_decoding(self, s: RequestState) -> None:
        del self.running[s.stamp]
        s.generated = s.gen_join + self.g - s.g_join
        s.energy_j += self.seat_j - s.seat_mark
        ctx = s.input_tokens + s.generated - 1
        self.ctx_sum -= ctx
        self.blocks_used -= self.blocks_for(ctx)
        self._phase[(ctx - self.g) % self.block_tokens] -= 1
        s.stamp = -1
        if len(self._ctx_heap) > 2 * len(self.running) + 64:  # stale entries below the top never surface: drop them
            self._ctx_heap = [e for e in self._ctx_heap if e[2].stamp == e[1]]
            heapq.heapify(self._ctx_heap)

    def decode_steps_done(self, k: int, energy_j: float, tokens: int) -> None:
        """Advance the decode set by k steps; each seat gets energy_j / tokens; finish those that are done."""
        if not self.running or k == 0:
            return
        self.seat_j += energy_j / tokens
        self.blocks_used += self.new_blocks(k)
        assert self.blocks_used <= self.capacity_blocks, (self.blocks_used, self.capacity_blocks)
        self.ctx_sum += len(self.running) * k
        self.g += k
        heap, now = self._heap, self.env.now
        while heap and (heap[0][0] <= self.g or heap[0][2].stamp != heap[0][1]):
            _, stamp, s = heapq.heappop(heap)
            if s.stamp == stamp:
                self._leave_decoding(s)
                self.finish(s, now)

    def preempt_last(self) -> None:
        """Preempt the most recently admitted decoding request by recompute: free its KV, requeue it first."""
        s = self.running[next(reversed(self.running))]
        self._leave_decoding(s)
        s.preemptions += 1
        s.prefilled = 0
        self.waiting.appendleft(s)
        if self.log is not None:
            self.log.append(("preempt", self.env.now, s.idx))

    def finish(self, s: RequestState, now: float) -> None:
        """Record a finished request."""
        self.outstanding -= 1
        self.ledger.finish(s, now, self.idx)
        if self.log is not None:
            self.log.append(("finish", now, s.idx))

    # ---- time and energy --------------------------------------------------------------------------------------
    def charge(self, start_s: float, time_s: float, energy_j: float) -> None:
        """Book one iteration or stretch of busy time and energy."""
        self.busy_s += time_s
        self.busy_j += energy_j
        self.ledger.timeline.add(start_s, time_s, energy_j)
