"""Continuous-batching scheduler with chunked prefill: decides which sequences run in the next iteration. No torch.

Policy (as vLLM's V1 scheduler and Sarathi-Serve's chunked prefill): running decodes go first, one token each;
the remaining token budget goes to prefill chunks, continuing partly prefilled sequences before admitting waiting
ones. When a decode cannot get a new KV block, the most recently admitted sequence is preempted (its blocks freed,
its tokens recomputed later).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from tokenjoule.kernels.block_manager import BlockManager
from tokenjoule.kernels.sequence import Sequence, SequenceStatus
from tokenjoule.kernels.shape import IterationShape

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    """One iteration's plan.

    Attributes:
        prefill: `(sequence, n_new_tokens)` per prefill chunk; the chunk is the sequence's next uncached tokens.
        decode: sequences that feed their last token.
    """

    prefill: tuple[tuple[Sequence, int], ...] = ()
    decode: tuple[Sequence, ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether there is nothing to run."""
        return not self.prefill and not self.decode

    def to_shape(self) -> IterationShape:
        """The plan's IterationShape (what the cost model prices)."""
        return IterationShape(
            prefill=tuple((n, seq.num_computed_tokens) for seq, n in self.prefill),
            decode=tuple(seq.num_computed_tokens for seq in self.decode),
        )


class Scheduler:
    """Queues of waiting and running sequences, and the block manager that backs them.

    Args:
        block_manager: KV block accounting.
        max_num_seqs: most sequences in one iteration.
        max_num_batched_tokens: most tokens (prefill plus decode) in one iteration.
    """

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_seqs <= 0 or max_num_batched_tokens <= 0:
            raise ValueError(f"max_num_seqs={max_num_seqs} and max_num_batched_tokens={max_num_batched_tokens} "
                             "must be > 0")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        """Queue a new sequence."""
        if seq.num_tokens > self.block_manager.capacity_tokens:
            raise ValueError(f"sequence {seq.seq_id}: {seq.num_tokens} tokens exceed the KV cache's capacity")
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        """Whether any sequence waits or runs."""
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """Plan the next iteration; reserves the KV blocks its tokens will be written to."""
        decode = self._schedule_decodes()
        budget = self.max_num_batched_tokens - len(decode)
        seats = self.max_num_seqs - len(decode)
        prefill: list[tuple[Sequence, int]] = []
        for seq in [s for s in self.running if not s.is_decoding]:
            if budget <= 0 or seats <= 0:
                break
            n = min(seq.num_uncached_tokens, budget)
            if not self.block_manager.can_append(seq.seq_id, self._growth(seq, n)):
                break
            self._reserve(seq, n)
            prefill.append((seq, n))
            budget, seats = budget - n, seats - 1
        while self.waiting and budget > 0 and seats > 0:
            seq = self.waiting[0]
            n = min(seq.num_uncached_tokens, budget)
            if not self.block_manager.can_allocate(n):
                break
            self._admit(seq, n)
            prefill.append((seq, n))
            budget, seats = budget - n, seats - 1
        return ScheduledBatch(prefill=tuple(prefill), decode=tuple(decode))

    def _admit(self, seq: Sequence, n: int) -> None:
        """Move the first waiting sequence into the running batch with KV blocks for its first `n` tokens."""
        self.waiting.popleft()
        self.block_manager.allocate(seq.seq_id, n)
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def commit(self, batch: ScheduledBatch, tokens: list[int], now_s: float) -> list[Sequence]:
        """Book an iteration's sampled tokens on its sequences; drop and return the ones that finished.

        `tokens` holds one sampled token per sequence that samples: each decode, and each prefill chunk that
        completes its prompt, in the batch's order (prefill chunks first).
        """
        sampled = iter(tokens)
        for seq, n in batch.prefill:
            done = seq.num_computed_tokens + n == seq.num_tokens
            seq.commit(n, next(sampled) if done else None, now_s)
        for seq in batch.decode:
            seq.commit(1, next(sampled), now_s)
        finished = [seq for seq in [s for s, _ in batch.prefill] + list(batch.decode)
                    if seq.status is SequenceStatus.FINISHED]
        for seq in finished:
            self.finish(seq)
        return finished

    def finish(self, seq: Sequence) -> None:
        """Drop a finished sequence and free its blocks."""
        self.running.remove(seq)
        self.block_manager.free(seq.seq_id)

    def _schedule_decodes(self) -> list[Sequence]:
        decode: list[Sequence] = []
        for seq in list(self.running):
            # a sequence preempted earlier in this loop is WAITING again (a status check, not an O(n) list search)
            if not seq.is_decoding or seq.status is not SequenceStatus.RUNNING:
                continue
            if len(decode) >= min(self.max_num_seqs, self.max_num_batched_tokens):
                break
            while not self.block_manager.can_append(seq.seq_id, self._growth(seq, 1)):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is SequenceStatus.RUNNING:
                self._reserve(seq, 1)
                decode.append(seq)
        return decode

    def _growth(self, seq: Sequence, n_new: int) -> int:
        return max(0, seq.num_computed_tokens + n_new - self.block_manager.num_tokens(seq.seq_id))

    def _reserve(self, seq: Sequence, n_new: int) -> None:
        self.block_manager.append(seq.seq_id, self._growth(seq, n_new))

    def _preempt(self, seq: Sequence) -> None:
        logger.info("preempting sequence %d (KV cache full)", seq.seq_id)
        self.running.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.preempt()
        self.waiting.appendleft(seq)
