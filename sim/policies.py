"""Batching policies: each a small class whose `next_batch(replica, now)` decides what the replica runs next.

A policy only reads the replica; it returns a plan, and `processes` carries the plan out through the replica's
actions. A plan is one of five: an `Iteration` (admit requests from the queue, prefill chunks, optionally with one
decode step of every decoding request), a `DecodeStretch` (decode steps of the whole, constant batch), a `Preempt`
(free KV blocks, then decide again), a `StaticBatch` (a padded batch run start to end) or a `Wait` (nothing until a
deadline or an arrival); `None` means sleep until an arrival.

KV memory is paged (vLLM's PagedAttention): a prompt's blocks are reserved when it is admitted, and a decoding
request takes a new block whenever its last one is full. When a step cannot get its blocks, the most recently
admitted decoding request is preempted by recompute (vLLM's default): its blocks are freed and it re-runs prefill
over prompt + generated tokens. A request whose prompt + output can never fit is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenjoule.kernels.spec import ConfigError

if TYPE_CHECKING:
    from tokenjoule.sim.replica import Replica, RequestState


@dataclass(slots=True)
class Iteration:
    """One forward pass: prefill chunks `(request, new_tokens)`, plus one decode step of every decoding request.

    The last `admitted` chunks belong to requests taken from the head of the waiting queue for this pass (their
    prompt KV is reserved then); the others continue a prefill started earlier. Not frozen, though nothing writes
    into one: a policy plans about one per request, and a frozen dataclass's `__init__` costs three times a plain one.
    """

    chunks: tuple[tuple[RequestState, int], ...]
    with_decodes: bool
    admitted: int


@dataclass(frozen=True, slots=True)
class DecodeStretch:
    """Decode steps of the whole batch, as many as KV memory allows up to the next completion, cut early by arrivals.

    First the `preempt` most recently admitted decoding requests are preempted, so that one step's new KV blocks fit.
    """

    preempt: int


@dataclass(frozen=True, slots=True)
class Preempt:
    """Preempt the `count` most recently admitted decoding requests (recompute), then decide again."""

    count: int


@dataclass(frozen=True, slots=True)
class StaticBatch:
    """A padded batch: prefill padded to the longest prompt, decode until the longest output, then all return."""

    members: tuple[RequestState, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to run before `until_s` unless a request arrives."""

    until_s: float


def _kv_reject(s: RequestState, rep: Replica) -> str | None:
    """'kv_capacity' when the prompt plus its whole output can never fit the replica's KV blocks."""
    return "kv_capacity" if rep.blocks_for(s.input_tokens + s.output_tokens) > rep.capacity_blocks else None


def _kv_tokens(rep: Replica) -> int:
    """The most prompt plus output tokens that fit the replica's KV blocks (`_kv_reject`'s bound, in tokens)."""
    return rep.capacity_blocks * rep.block_size


DECODE = DecodeStretch(0)  # the common plan, allocated once (the replica process tells it by identity)


@dataclass(frozen=True, slots=True)
class StaticBatching:
    """Hugging Face `generate` style static batching (the paper's PyTorch baseline).

    Takes up to `max_batch` queued requests (first come, first served) once the batch is full or the oldest has
    waited `batch_timeout_s`; prefill is padded to the longest prompt, decoding runs until the longest output, and
    the padded work is charged to the batch's requests. All results return when the batch ends.

    Attributes:
        max_batch: requests per batch.
        batch_timeout_s: how long to wait for a full batch (0: run whatever is queued).
    """

    max_batch: int = 8
    batch_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch {self.max_batch}: must be >= 1")
        if self.batch_timeout_s < 0:
            raise ConfigError(f"--batch-timeout-s {self.batch_timeout_s:g}: must be >= 0")

    def reject_reason(self, s: RequestState, rep: Replica) -> str | None:
        """Why a request can never run here (None when it can)."""
        return _kv_reject(s, rep)

    def max_request_tokens(self, rep: Replica) -> int:
        """The most prompt plus output tokens of a request it serves: `reject_reason` is None up to it, not beyond."""
        return _kv_tokens(rep)

    def next_batch(self, rep: Replica, now: float) -> StaticBatch | Wait | None:
        """The next padded batch, a Wait for more requests, or None when the queue is empty."""
        if not rep.waiting:
            return None
        deadline = rep.waiting[0].arrival_s + self.batch_timeout_s
        if len(rep.waiting) < self.max_batch and now < deadline:
            return Wait(deadline)
        members: list[RequestState] = []
        max_in = max_out = 0
        for s in rep.waiting:
            if len(members) == self.max_batch:
                break
            i, o = max(max_in, s.input_tokens), max(max_out, s.output_tokens)
            if members and (len(members) + 1) * rep.blocks_for(i + o) > rep.capacity_blocks:
                break  # the padded batch would not fit the KV cache
            members.append(s)
            max_in, max_out = i, o
        return StaticBatch(tuple(members))

    def admits_midstretch(self, rep: Replica, free_blocks: int) -> bool:
        """Static batches never admit mid-flight."""
        return False


# Default prompt-token budget of a continuous-batching iteration: the tokenjoule engine's default and the largest
# iteration its calibration sweeps measure, so every default prefill stays inside the measured range.
CONTINUOUS_MAX_NUM_BATCHED_TOKENS = 16384


@dataclass(frozen=True, slots=True)
class ContinuousBatching:
    """vLLM (V0 default) iteration-level batching, prefill prioritized.

    Each iteration either prefills newly admitted requests (first come, first served, while the batch has fewer
    than `max_num_seqs` sequences, the prompts sum to at most `max_num_batched_tokens` and their KV fits) or decodes
    one token of every running request. A prompt longer than `max_num_batched_tokens` can never be scheduled and is
    rejected.

    Attributes:
        max_num_seqs: most sequences in the batch.
        max_num_batched_tokens: most prompt tokens per prefill iteration.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = CONTINUOUS_MAX_NUM_BATCHED_TOKENS

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"--max-num-seqs {self.max_num_seqs}: must be >= 1")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"--max-batched-tokens {self.max_num_batched_tokens}: must be >= 1")

    def reject_reason(self, s: RequestState, rep: Replica) -> str | None:
        """Why a request can never run here (None when it can)."""
        if _kv_reject(s, rep):
            return "kv_capacity"
        if s.input_tokens + s.output_tokens - 1 > self.max_num_batched_tokens:
            return "max_num_batched_tokens"  # a recompute after preemption could exceed it
        return None

    def max_request_tokens(self, rep: Replica) -> int:
        """The most prompt plus output tokens of a request it serves: `reject_reason` is None up to it, not beyond."""
        return min(_kv_tokens(rep), self.max_num_batched_tokens + 1)

    def next_batch(self, rep: Replica, now: float) -> Iteration | DecodeStretch | None:
        """Admit and prefill waiting requests if any fit; else decode the running batch (preempting to fit a step)."""
        running, waiting = rep.running, rep.waiting
        free = rep.capacity_blocks - rep.blocks_used
        if waiting:
            chunks: list[tuple[RequestState, int]] = []
            tokens, seqs, bs = 0, len(running), rep.block_size
            max_seqs, max_tokens = self.max_num_seqs, self.max_num_batched_tokens
            for s in waiting:
                if seqs >= max_seqs:
                    break
                need = s.input_tokens + s.generated  # its prefill target
                blocks = -(need // -bs)  # `rep.blocks_for(need)`, written out in this loop
                if tokens + need > max_tokens or blocks > free:
                    break
                chunks.append((s, need))
                tokens, free, seqs = tokens + need, free - blocks, seqs + 1
            if chunks:
                return Iteration(tuple(chunks), False, len(chunks))
        if not running:
            return None
        if free >= len(running):  # a step takes at most a block per sequence: no preemption
            return DECODE
        victims = rep.victims_for_one_step()
        return DecodeStretch(victims) if victims else DECODE

    def admits_midstretch(self, rep: Replica, free_blocks: int) -> bool:
        """Would the next iteration boundary admit the head of the queue (monotone in `free_blocks`)?"""
        if not rep.waiting or len(rep.running) >= self.max_num_seqs:
            return False
        head = rep.waiting[0]
        need = head.input_tokens + head.generated  # its prefill target
        return need <= self.max_num_batched_tokens and -(need // -rep.block_size) <= free_blocks  # `rep.blocks_for`


@dataclass(frozen=True, slots=True)
class ChunkedPrefill:
    """Sarathi-Serve / vLLM V1 chunked prefill: a token budget per iteration, decodes first.

    Every iteration decodes one token of each running request, then fills the rest of the `max_num_batched_tokens`
    budget with prefill chunks (requests already prefilling first, then newly admitted ones). A request's whole
    prompt KV is reserved when its first chunk is scheduled. With no prefill work left, the batch decodes in a
    stretch.

    Attributes:
        max_num_seqs: most sequences (decoding + prefilling).
        max_num_batched_tokens: token budget per iteration.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"--max-num-seqs {self.max_num_seqs}: must be >= 1")
        if self.max_num_batched_tokens <= self.max_num_seqs:
            raise ConfigError(f"--max-batched-tokens {self.max_num_batched_tokens}: must exceed --max-num-seqs "
                              f"{self.max_num_seqs} under --policy chunked, so that prefill chunks can make progress")

    def reject_reason(self, s: RequestState, rep: Replica) -> str | None:
        """Why a request can never run here (None when it can)."""
        return _kv_reject(s, rep)

    def max_request_tokens(self, rep: Replica) -> int:
        """The most prompt plus output tokens of a request it serves: `reject_reason` is None up to it, not beyond."""
        return _kv_tokens(rep)

    def next_batch(self, rep: Replica, now: float) -> Iteration | DecodeStretch | Preempt | None:
        """Preempt until a decode step fits; then decodes first, prefill chunks within the budget, or a stretch."""
        running, waiting, prefilling = rep.running, rep.waiting, rep.prefilling
        free = rep.capacity_blocks - rep.blocks_used
        if not waiting and not prefilling and free >= len(running):  # the common case: decode on
            return DECODE if running else None
        if waiting or free < len(running):  # a step takes at most a block per sequence: free is enough to decode
            free -= rep.phase[-rep.decode_steps % rep.block_size]  # `rep.new_blocks(1)`: this iteration's decode
            if free < 0:
                return Preempt(rep.victims_for_one_step())
        if not waiting and not prefilling:
            return DECODE if running else None
        budget = self.max_num_batched_tokens - len(running)
        chunks: list[tuple[RequestState, int]] = []
        for s in prefilling:
            if budget <= 0:
                break
            c = s.input_tokens + s.generated - s.prefilled  # the rest of its prefill target
            c = budget if budget < c else c  # `min(c, budget)`, without the call (here and below)
            chunks.append((s, c))
            budget -= c
        admitted, seats, bs = 0, self.max_num_seqs - len(running) - len(prefilling), rep.block_size
        for s in waiting:
            if budget <= 0 or admitted >= seats:
                break
            need = s.input_tokens + s.generated  # its prefill target
            blocks = -(need // -bs)  # `rep.blocks_for(need)`, written out in this loop
            if blocks > free:
                break
            free -= blocks
            c = budget if budget < need else need
            chunks.append((s, c))
            budget -= c
            admitted += 1
        if chunks:
            return Iteration(tuple(chunks), True, admitted)
        return DECODE if running else None

    def admits_midstretch(self, rep: Replica, free_blocks: int) -> bool:
        """Would the next iteration boundary schedule a chunk of the queue's head (monotone in `free_blocks`)?"""
        waiting, decoding = rep.waiting, len(rep.running)
        if not waiting or decoding >= self.max_num_seqs:
            return False
        head = waiting[0]
        # `rep.blocks_for(head.prefill_target)`, written out: asked of nearly every arrival mid-stretch
        return -((head.input_tokens + head.generated) // -rep.block_size) <= free_blocks - decoding


POLICIES = {"static": StaticBatching, "continuous": ContinuousBatching, "chunked": ChunkedPrefill}
