"""Mutable simulation state: one RequestState per live request, one Replica per model instance (queue, batch, KV).

The replica owns this state: policies read it to decide, and the processes change it only through the replica's
actions (`start_iteration`, `finish_iteration`, `start_decode`, `decode_steps_done`, `preempt_newest`,
`finish`, ...).

The decode bookkeeping is lazy so that a decode stretch costs O(1) however large the batch: advancing k steps only
adds k to the replica's `decode_steps` and the per-seat energy to `seat_energy_j`; a request records both counters
when it joins the decode set (`steps_at_join`, `seat_energy_at_join_j`) and settles the differences when it leaves
(finish or preemption). Every decoding context grows by one a step, as `decode_steps` does, so a request's context
minus that counter is fixed while it decodes: the longest context is a heap of those offsets, O(log n) a change
(kept only for a cost model that prices the longest context).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from heapq import heapify, heappop, heappush
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from tokenjoule.sim.accounting import FILL_EVERY

if TYPE_CHECKING:
    import simpy

    from tokenjoule.sim.accounting import Ledger
    from tokenjoule.sim.cost import CostModel, StretchCost
    from tokenjoule.sim.iterations import IterationLog
    from tokenjoule.sim.policies import Iteration


class RequestState:
    """A request while it is simulated: progress counters plus a reference to its trace row.

    The `*_at_join` fields are the lazy decode settlement (see the module docstring): while the request decodes, its
    `generated` and `energy_j` lag behind, and `Replica` brings them up to date from these marks when it leaves.

    Attributes:
        idx: row index in the trace (the ledger's slot).
        arrival_s: arrival time (s).
        input_tokens: prompt length.
        output_tokens: tokens to generate.
        generated: tokens generated so far (kept across a recompute preemption; settled when it leaves decoding).
        prefilled: tokens of the current prefill target already computed (chunked prefill).
        steps_at_join: the replica's `decode_steps` when this request joined the decode set.
        generated_at_join: `generated` at that moment.
        seat_energy_at_join_j: the replica's `seat_energy_j` at that moment (J).
        energy_j: energy attributed so far (J; settled when it leaves decoding).
        preemptions: times preempted (recompute).
        start_s: when it was first scheduled (NaN before).
        first_token_s: when its first output token was produced (NaN before).
        decode_join_id: which join to the decode set this is (-1 while not decoding); heap entries carry it, so
            entries left behind by a finish or a preemption are recognised as stale and skipped.
    """

    __slots__ = ("idx", "arrival_s", "input_tokens", "output_tokens", "generated", "prefilled", "steps_at_join",
                 "generated_at_join", "seat_energy_at_join_j", "energy_j", "preemptions", "start_s", "first_token_s",
                 "decode_join_id")

    def __init__(self, idx: int, arrival_s: float, input_tokens: int, output_tokens: int) -> None:
        self.idx = idx
        self.arrival_s = arrival_s
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.generated = 0
        self.prefilled = 0
        self.steps_at_join = 0
        self.generated_at_join = 0
        self.seat_energy_at_join_j = 0.0
        self.energy_j = 0.0
        self.preemptions = 0
        self.start_s = math.nan
        self.first_token_s = math.nan
        self.decode_join_id = -1

    def decode_context(self, steps: int) -> int:
        """Its KV context while decoding, at the replica's decode step `steps` (the lazy counters settled)."""
        return self.input_tokens + self.generated_at_join + steps - self.steps_at_join - 1

    @property
    def prefill_target(self) -> int:
        """Tokens a (re)prefill must compute: the prompt plus tokens generated before a preemption."""
        return self.input_tokens + self.generated


class Replica:
    """One model instance (tp GPUs): waiting queue, prefilling and decoding sets, KV blocks, energy counters.

    Attributes:
        idx: replica number.
        env: the SimPy environment.
        policy: the batching policy (see `policies.POLICIES`).
        cost: the cost model.
        ledger: where finished requests and energy go.
        block_size: tokens per KV block (vLLM's block_size).
        capacity_blocks: KV blocks this replica holds (the cost model's token capacity // block_size).
        log: optional (event, time_s, request_id_or_detail) list for tests and debugging.
        iterations: optional record of every iteration and decode stretch (`simulate --events`).
        waiting: arrived requests not yet admitted, first come first served (preempted ones go back to the front).
        prefilling: admitted requests whose prefill has not finished, in admission order.
        running: the decode set by `decode_join_id`, in join order (the last one is the preemption victim).
        decode_steps: decode steps the decode set has taken (the lazy settlement's clock).
        seat_energy_j: cumulative energy of one decode seat over those steps (J): each step adds its energy divided by
            the tokens it processed, so a request's decode energy is the difference since it joined.
        ctx_sum: KV tokens of the decoding requests at step `decode_steps`.
        phase: decoding requests by (context - decode_steps) mod block_size: those at index -decode_steps mod
            block_size have a full last block, and take a new one at the next step (`new_blocks`).
        blocks_used: KV blocks held (decoding requests, and prompts reserved when admitted to prefill).
        busy_s: busy time so far (s).
        busy_j: busy energy so far (J).
        outstanding: requests submitted and not finished (the least-outstanding router reads it).
    """

    # Slotted: with over 30 attributes (CPython shares at most 30 keys) its instances would keep their own dicts, and
    # every attribute read on the simulator's hot path would take the slower lookup.
    __slots__ = ("idx", "env", "policy", "cost", "ledger", "_book", "_record_finish", "_admits_midstretch", "_booked",
                 "_timeout", "_price_stretch", "_price_iteration", "log", "iterations", "block_size",
                 "capacity_blocks", "waiting", "prefilling", "running", "_finish_heap", "_ctx_heap", "_tally",
                 "_seqs_in", "_tokens_in", "_prompt_in", "_ctx_in", "_tracks_longest", "_ctx_heap_above",
                 "_decode_joins", "decode_steps", "ctx_sum", "blocks_used", "phase", "seat_energy_j", "busy_s",
                 "busy_j", "outstanding", "process", "wake", "stretch", "iteration", "cut")

    def __init__(self, idx: int, env: simpy.Environment, policy: Any, cost: CostModel, ledger: Ledger,
                 block_size: int = 16, log: list | None = None, iterations: IterationLog | None = None) -> None:
        self.idx = idx
        self.env = env
        self.policy = policy
        self.cost = cost
        self.ledger = ledger
        self._book = ledger.timeline.add
        self._record_finish = ledger.finish
        self._admits_midstretch = policy.admits_midstretch
        self._booked = ledger.timeline.booked  # the timeline's pending intervals, appended to on the hot path
        self._timeout = env.timeout
        self._price_stretch = cost.decode_stretch
        self._price_iteration = cost.iteration_of
        self.log = log
        self.iterations = iterations
        self.block_size = block_size
        self.capacity_blocks = int(cost.kv_capacity_tokens) // block_size
        self.waiting: deque[RequestState] = deque()
        self.prefilling: list[RequestState] = []
        self.running: dict[int, RequestState] = {}
        self._finish_heap: list[tuple[int, int, RequestState]] = []  # (step of its last token, join id, state)
        self._ctx_heap: list[tuple[int, int, RequestState]] = []  # (steps - context, join id, state): longest first
        self._tally = tally = ledger.range_tally
        # the tally's range, to count an iteration inside it without a call (`RangeTally.limits`)
        self._seqs_in, self._tokens_in, self._prompt_in, self._ctx_in = tally.limits if tally is not None else (0,) * 4
        # keep the heap only where the longest context is read: by the cost model, or the range tally
        self._tracks_longest = cost.uses_longest_context or self._tally is not None
        # The heap holds requests whose context can exceed this many tokens: all of them where the cost model prices
        # the longest context; else (the range tally alone reads it, to count decodes beyond the measured context)
        # only those whose prompt plus output is longer than that, usually none (see `max_ctx`).
        self._ctx_heap_above = -1 if cost.uses_longest_context or self._tally is None else self._tally.context_tokens
        self._decode_joins = 0
        self.decode_steps = 0
        self.ctx_sum = 0
        self.blocks_used = 0
        self.phase = [0] * block_size  # decoding requests by (context - decode_steps) mod block_size
        self.seat_energy_j = 0.0
        self.busy_s = 0.0
        self.busy_j = 0.0
        self.outstanding = 0
        self.process: simpy.Process | None = None
        self.wake: simpy.Event | None = None
        # a decode stretch under way: (start_s, cost, planned steps, their seconds, the event of its end, longest ctx,
        # batch)
        self.stretch: tuple[float, StretchCost, int, float, simpy.Event, int, int] | None = None
        self.iteration: tuple | None = None  # an iteration under way (see `start_iteration`)
        self.cut: tuple[int, float, float] | None = None  # (steps, seconds, end time) of a stretch cut short

    # ---- paged KV blocks (read-only questions the policies ask) ------------------------------------------------
    @property
    def free_blocks(self) -> int:
        """KV blocks not held by any request."""
        return self.capacity_blocks - self.blocks_used

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.block_size)

    def new_blocks(self, k: int) -> int:
        """Blocks the decoding batch allocates over its next k steps.

        A sequence whose cache is exactly full at a step's start needs a fresh block for that step's token; the
        phase histogram says how many sequences are in that state at each step (it repeats every block_size steps).
        """
        bs, phase = self.block_size, self.phase
        p0 = -self.decode_steps % bs  # phase index of step 0; step j reads index p0 - j (cyclically)
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
        bs, phase = self.block_size, self.phase
        full, left = divmod(free_blocks, len(self.running))
        p0 = -self.decode_steps % bs
        needs = accumulate(phase[p0::-1] + phase[:p0:-1])  # new blocks by step, one period from step 0
        return full * bs + bisect_right(list(needs), left)

    def victims_for_one_step(self) -> int:
        """How many of the newest decoding requests must be preempted before one decode step's new blocks fit.

        Preempting a request frees its blocks and, when its cache is exactly full, its need for a new one.
        """
        free = self.capacity_blocks - self.blocks_used
        if free >= len(self.running):  # a step takes at most one new block per sequence
            return 0
        need = self.new_blocks(1)
        if free >= need:
            return 0
        bs, steps, victims = self.block_size, self.decode_steps, 0
        for s in reversed(self.running.values()):
            if free >= need:
                break
            ctx = s.decode_context(steps)
            free += self.blocks_for(ctx)
            need -= ctx % bs == 0
            victims += 1
        return victims

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
            return
        stretch = self.stretch
        if stretch is None or self.cut is not None:
            return
        # Cut the decode stretch under way at its first step boundary after now, if the policy admits there.
        start, cost, planned, _, end, _, batch = stretch
        k, time_s = cost.boundary_after(now - start)
        if k >= planned:
            return
        # Would the policy admit the head of the queue at the k-th step boundary? Its answer is monotone in the free
        # blocks, and k steps take at most ceil(k / block_size) blocks a sequence: the exact count (`new_blocks`) is
        # needed only when that bound and the blocks free now disagree.
        admits, free = self._admits_midstretch, self.capacity_blocks - self.blocks_used  # `free_blocks`
        if (admits(self, free - batch * -(-k // self.block_size))
                or admits(self, free) and admits(self, free - self.new_blocks(k))):
            # The replica process waits on `end`: hand its wait (the event's callbacks) to the cut's boundary. An
            # Interrupt would do the same with one more event and an exception thrown into the process.
            delay = start + time_s - now
            delay = delay if delay > 0.0 else 0.0  # `max(0.0, delay)`, without the call: once an admitted arrival
            self.cut = k, time_s, now + delay  # SimPy's arithmetic for the time the timeout fires
            cut = self._timeout(delay)
            cut.callbacks, end.callbacks = end.callbacks, []

    def sleep(self) -> simpy.Event:
        """An event that a new arrival triggers."""
        self.wake = self.env.event()
        return self.wake

    def end_sleep(self) -> None:
        """Stop listening for arrivals (a timeout, not an arrival, may have ended the sleep)."""
        self.wake = None

    def start_stretch(self, now: float) -> simpy.Timeout:
        """Price a decode stretch of the running batch to its next completion (or KV limit): the event of its end.

        Arrivals the policy would admit cut it short (see `submit`), until `finish_stretch`.
        """
        longest = self.max_ctx() if self._tracks_longest and self._ctx_heap else 0  # none in the heap: 0
        batch = len(self.running)
        cost = self._price_stretch(batch, self.ctx_sum, longest)
        heap = self._finish_heap  # `steps_to_next_finish`, written out (once a stretch)
        top = heap[0]
        while top[2].decode_join_id != top[1]:
            heappop(heap)
            top = heap[0]
        steps = top[0] - self.decode_steps
        free = self.capacity_blocks - self.blocks_used
        # k steps take at most ceil(k / block_size) new blocks a sequence: walk the blocks only if so many are not free
        if free < batch * -(-steps // self.block_size):
            steps = min(self.max_decode_steps(free), steps)
        if cost.bound is None:  # `cost.time_s(steps)`, written out
            time_s = steps * cost.time_a + cost.time_d * steps * (steps - 1) / 2.0
        else:
            time_s = cost.time_s(steps)
        end = self._timeout(time_s)
        self.stretch = (now, cost, steps, time_s, end, longest, batch)
        return end

    def finish_stretch(self) -> float:
        """The stretch ended (run out, or cut short): book its time and energy and advance the decode set.

        Returns the time it ended (SimPy's clock then, by the same arithmetic: the process need not ask the clock).
        """
        start, cost, steps, time_s, _, longest, batch = self.stretch
        if self.cut is not None:
            steps, time_s, now = self.cut
            self.cut = None
        else:
            now = start + time_s
        self.stretch = None
        # `cost.energy_of(steps, time_s)`, written out
        energy_j = steps * cost.energy_a + cost.energy_d * steps * (steps - 1) / 2.0 + cost.energy_per_s * time_s
        self.busy_s += time_s  # `charge`, written out here and in `finish_iteration`: together once a plan
        self.busy_j += energy_j
        booked = self._booked  # `timeline.add`, written out here and in `finish_iteration`
        booked += start, time_s, energy_j
        if len(booked) >= FILL_EVERY:
            self.ledger.timeline.fill()
        tally = self._tally
        if tally is not None:  # inside the range (`RangeTally.decode`'s test): count the steps, else report them
            if batch <= self._seqs_in and longest + steps - 1 <= self._ctx_in:
                tally.iterations += steps
            else:
                tally.decode(batch, longest, steps)
        if self.log is not None:
            self.log.append(("decode", start, steps))
        if self.iterations is not None:
            self.iterations.stretch(self.idx, start, steps, batch, cost)
        if steps:  # `decode_steps_done(steps, energy_j, batch)`, written out: once a stretch
            self.seat_energy_j += energy_j / batch
            done, bs, phase = self.decode_steps, self.block_size, self.phase
            p0 = -done % bs  # `new_blocks(steps)`, written out (`batch` is len(running))
            if steps == 1:
                new = phase[p0]
            else:
                full, rest = divmod(steps, bs)
                new = full * batch
                if rest:
                    lo = p0 - rest + 1
                    new += sum(phase[lo:p0 + 1]) if lo >= 0 else sum(phase[:p0 + 1]) + sum(phase[bs + lo:])
            blocks = self.blocks_used = self.blocks_used + new
            assert blocks <= self.capacity_blocks, (blocks, self.capacity_blocks)
            self.ctx_sum += batch * steps
            done = self.decode_steps = done + steps
            last_step, join_id, s = self._finish_heap[0]
            if last_step <= done or s.decode_join_id != join_id:
                self._finish_due(done, now)
        return now

    # ---- admission and prefill ------------------------------------------------------------------------------------
    def start_iteration(self, plan: Iteration, now: float) -> simpy.Timeout:
        """Admit the plan's new requests and price its forward pass: the event of its end."""
        chunks = plan.chunks
        admitted = plan.admitted
        if admitted:  # take the newly admitted requests (the queue's head) into prefill, reserving each whole target
            waiting, prefilling, bs = self.waiting, self.prefilling, self.block_size
            blocks = 0
            for s, _ in chunks[len(chunks) - admitted:]:
                assert waiting[0] is s, "admissions follow the queue order"
                waiting.popleft()
                prefilling.append(s)
                blocks -= (s.input_tokens + s.generated) // -bs
                if s.start_s != s.start_s:  # NaN: first time scheduled
                    s.start_s = now
            self.blocks_used += blocks
        batch = len(self.running) if plan.with_decodes else 0
        new, pairs, ctx, prompt_end = batch, 0, 0, 0
        for s, c in chunks:
            done = s.prefilled
            new += c
            pairs += c * done + c * (c + 1) // 2
            ctx += done
            if done + c > prompt_end:
                prompt_end = done + c
        longest = self.max_ctx() if batch and self._tracks_longest and self._ctx_heap else 0
        time_s, energy_j = self._price_iteration(new, pairs, ctx, self.ctx_sum if batch else 0, batch, len(chunks),
                                                 longest)  # IterFeatures' fields, in order
        tally = self._tally
        if tally is not None:  # inside the range (`RangeTally.iteration`'s test): count it, else report it
            if (batch <= self._seqs_in and new <= self._tokens_in and prompt_end <= self._prompt_in
                    and longest <= self._ctx_in):
                tally.iterations += 1
            else:
                tally.iteration(batch, new, prompt_end, longest)
        self.iteration = (chunks, now, time_s, energy_j, batch, new)
        return self._timeout(time_s)

    def finish_iteration(self) -> float:
        """The forward pass ended: book it, advance the decodes it carried, and share its energy by tokens.

        Returns the time it ended (SimPy's clock then, by the same arithmetic).
        """
        chunks, start, time_s, energy_j, batch, new = self.iteration
        self.iteration = None
        now = start + time_s
        self.busy_s += time_s  # `charge`, written out
        self.busy_j += energy_j
        booked = self._booked  # `timeline.add`, written out
        booked += start, time_s, energy_j
        if len(booked) >= FILL_EVERY:
            self.ledger.timeline.fill()
        if self.log is not None:
            self.log.append(("prefill", start, tuple((s.idx, c) for s, c in chunks)))
        if self.iterations is not None:
            self.iterations.iteration(self.idx, start, time_s, energy_j, new - batch, len(chunks), batch)
        if batch:  # `decode_steps_done(1, energy_j, new)`, written out: the decode set is the one priced
            self.seat_energy_j += energy_j / new
            steps = self.decode_steps
            blocks = self.blocks_used = self.blocks_used + self.phase[-steps % self.block_size]
            assert blocks <= self.capacity_blocks, (blocks, self.capacity_blocks)
            self.ctx_sum += batch
            steps = self.decode_steps = steps + 1
            last_step, join_id, s = self._finish_heap[0]
            if last_step <= steps or s.decode_join_id != join_id:
                self._finish_due(steps, now)
        for s, c in chunks:  # each chunk's share of the energy, by tokens; a prefill's last chunk ends it
            s.energy_j += energy_j * c / new
            prefilled = s.prefilled = s.prefilled + c
            if prefilled != s.input_tokens + s.generated:
                continue
            # The prefill emitted a token (the first, or the next after a preemption): decode on, or finish.
            self.prefilling.remove(s)
            s.prefilled = 0
            generated = s.generated = s.generated + 1
            if s.first_token_s != s.first_token_s:
                s.first_token_s = now
                if self.log is not None:
                    self.log.append(("first_token", now, s.idx))
            ctx = s.input_tokens + generated - 1  # `start_decode`, written out (once a request)
            if generated >= s.output_tokens:
                self.finish(s, now)
                self.blocks_used -= -(ctx // -self.block_size)  # `blocks_for(ctx)`
                continue
            join = self._decode_joins = self._decode_joins + 1
            steps = self.decode_steps
            s.decode_join_id, s.steps_at_join, s.generated_at_join = join, steps, generated
            s.seat_energy_at_join_j = self.seat_energy_j
            self.running[join] = s
            self.ctx_sum += ctx
            self.phase[(ctx - steps) % self.block_size] += 1
            heappush(self._finish_heap, (steps + s.output_tokens - generated, join, s))
            if self._tracks_longest and s.input_tokens + s.output_tokens > self._ctx_heap_above:
                heappush(self._ctx_heap, (steps - ctx, join, s))
        return now

    # ---- decoding set -------------------------------------------------------------------------------------------
    def steps_to_next_finish(self) -> int:
        """Decode steps until the first decoding request emits its last token."""
        heap = self._finish_heap
        top = heap[0]
        while top[2].decode_join_id != top[1]:
            heappop(heap)
            top = heap[0]
        return top[0] - self.decode_steps

    def max_ctx(self) -> int:
        """The longest context among the decoding requests at step `decode_steps` (0 when none decodes).

        From the heap where the cost model or the range tally reads it (`_tracks_longest`), else by a scan. Where only
        the range tally reads it, the heap holds just the requests that can outgrow the measured context: then this
        is their longest (0 without any), exact whenever the longest context is beyond the measured one, which is all
        the tally asks (every other request stays within it up to its last token, so none of them is ever beyond).
        """
        if not self._tracks_longest:
            return max((s.decode_context(self.decode_steps) for s in self.running.values()), default=0)
        heap = self._ctx_heap
        while heap:
            top = heap[0]
            if top[2].decode_join_id == top[1]:
                return self.decode_steps - top[0]
            heappop(heap)  # a request that left the decode set
        return 0

    def start_decode(self, s: RequestState) -> None:
        """Move a request whose prefill just produced a token into the decode set (or finish it)."""
        ctx = s.input_tokens + s.generated - 1  # its blocks were reserved at admission
        if s.generated >= s.output_tokens:
            self.finish(s, self.env.now)
            self.blocks_used -= self.blocks_for(ctx)
            return
        join = self._decode_joins = self._decode_joins + 1
        steps = self.decode_steps
        s.decode_join_id, s.steps_at_join, s.generated_at_join = join, steps, s.generated
        s.seat_energy_at_join_j = self.seat_energy_j
        self.running[join] = s
        self.ctx_sum += ctx
        self.phase[(ctx - steps) % self.block_size] += 1
        heappush(self._finish_heap, (steps + s.output_tokens - s.generated, join, s))
        if self._tracks_longest and s.input_tokens + s.output_tokens > self._ctx_heap_above:
            heappush(self._ctx_heap, (steps - ctx, join, s))

    def _leave_decode(self, s: RequestState) -> None:
        """Settle the lazy counters of a request leaving the decode set and release its KV blocks."""
        del self.running[s.decode_join_id]
        s.generated = s.generated_at_join + self.decode_steps - s.steps_at_join
        s.energy_j += self.seat_energy_j - s.seat_energy_at_join_j
        ctx = s.input_tokens + s.generated - 1
        self.ctx_sum -= ctx
        self.blocks_used += ctx // -self.block_size  # minus `blocks_for(ctx)`
        self.phase[(ctx - self.decode_steps) % self.block_size] -= 1
        s.decode_join_id = -1
        if self._tracks_longest and len(self._ctx_heap) > 2 * len(self.running) + 64:  # stale ones never surface
            self._compact_ctx_heap()

    def _compact_ctx_heap(self) -> None:
        """Drop the longest-context heap's stale entries (requests that left the decode set)."""
        self._ctx_heap = [e for e in self._ctx_heap if e[2].decode_join_id == e[1]]
        heapify(self._ctx_heap)

    def decode_steps_done(self, k: int, energy_j: float, tokens: int) -> None:
        """Advance the decode set by k steps; each seat gets energy_j / tokens; finish those that are done."""
        running = self.running
        if not running or k == 0:
            return
        self.seat_energy_j += energy_j / tokens
        steps = self.decode_steps
        new = self.phase[-steps % self.block_size] if k == 1 else self.new_blocks(k)  # `new_blocks(1)`, inlined
        blocks = self.blocks_used = self.blocks_used + new
        assert blocks <= self.capacity_blocks, (blocks, self.capacity_blocks)
        self.ctx_sum += len(running) * k
        steps = self.decode_steps = steps + k
        last_step, join_id, s = self._finish_heap[0]
        if last_step <= steps or s.decode_join_id != join_id:  # somebody's last token, or a stale entry on top
            self._finish_due(steps, self.env.now)

    def _finish_due(self, steps: int, now: float) -> None:
        """Finish the decoding requests whose last token came by decode step `steps`; drop stale heap entries."""
        heap, running, phase, bs = self._finish_heap, self.running, self.phase, self.block_size
        while heap:
            last_step, join_id, s = heap[0]
            if last_step > steps and s.decode_join_id == join_id:
                break
            heappop(heap)
            if s.decode_join_id != join_id:  # a stale entry of a preempted request
                continue
            # `_leave_decode(s)`, written out (`steps` is decode_steps)
            del running[join_id]
            generated = s.generated = s.generated_at_join + steps - s.steps_at_join
            s.energy_j += self.seat_energy_j - s.seat_energy_at_join_j
            ctx = s.input_tokens + generated - 1
            self.ctx_sum -= ctx
            self.blocks_used += ctx // -bs  # minus `blocks_for(ctx)`
            phase[(ctx - steps) % bs] -= 1
            s.decode_join_id = -1
            ctx_heap = self._ctx_heap  # `_leave_decode`'s test (the heap is empty where not `_tracks_longest`)
            if len(ctx_heap) > 64 and len(ctx_heap) > 2 * len(running) + 64:  # stale ones never surface
                self._compact_ctx_heap()
            self.outstanding -= 1  # `finish`, written out
            self._record_finish(s, now, self.idx)
            if self.log is not None:
                self.log.append(("finish", now, s.idx))

    def preempt_newest(self, n: int = 1) -> None:
        """Preempt the n most recently admitted decoding requests by recompute: free their KV, requeue them first."""
        for _ in range(n):
            s = self.running[next(reversed(self.running))]
            self._leave_decode(s)
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

    # ---- static batches -------------------------------------------------------------------------------------------
    def admit_static(self, members: tuple[RequestState, ...], now: float) -> None:
        """Take a padded batch from the head of the queue (static batching reserves no paged KV)."""
        for s in members:
            assert self.waiting[0] is s, "admissions follow the queue order"
            self.waiting.popleft()
            s.start_s = now

    def static_prefill_done(self, members: tuple[RequestState, ...], energy_j: float, now: float) -> None:
        """The padded prefill emitted every member's first token; its energy is shared equally."""
        for s in members:
            s.energy_j += energy_j / len(members)
            s.first_token_s = now

    def static_decode_done(self, members: tuple[RequestState, ...], energy_j: float) -> None:
        """The padded decode (to the longest output) ended; its energy is shared equally."""
        for s in members:
            s.energy_j += energy_j / len(members)

    def finish_static(self, members: tuple[RequestState, ...], now: float) -> None:
        """The padded batch is over: every member has its whole output and returns now."""
        for s in members:
            s.generated = s.output_tokens
            self.finish(s, now)

    # ---- time and energy --------------------------------------------------------------------------------------
    def charge(self, start_s: float, time_s: float, energy_j: float) -> None:
        """Book one iteration or stretch of busy time and energy."""
        self.busy_s += time_s
        self.busy_j += energy_j
        self._book(start_s, time_s, energy_j)
