"""Sequence: the mutable state of one request inside the engine (tokens, cache progress, timestamps). No torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class SequenceStatus(Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request's state. Its token ids are the prompt followed by the tokens generated so far.

    A sequence is *decoding* when every token but the last is in the KV cache (`num_computed_tokens ==
    num_tokens - 1`): the next iteration feeds the last token. Otherwise it is *prefilling*: the next iteration
    feeds a chunk of its uncached tokens. A preempted sequence drops its cache and prefills everything again.

    Attributes:
        seq_id: unique id.
        token_ids: prompt then generated tokens.
        prompt_len: tokens in the prompt.
        max_output_tokens: tokens to generate before finishing.
        arrival_s: when the request arrived (engine clock, seconds).
        status: WAITING, RUNNING or FINISHED.
        num_computed_tokens: tokens whose K/V is in the cache.
        first_token_s: when the first output token was sampled.
        finish_s: when the last output token was sampled.
    """

    seq_id: int
    token_ids: list[int]
    prompt_len: int
    max_output_tokens: int
    arrival_s: float = 0.0
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.prompt_len <= 0 or len(self.token_ids) < self.prompt_len:
            raise ValueError(f"sequence {self.seq_id}: prompt_len={self.prompt_len} must be in [1, len(token_ids)]")
        if self.max_output_tokens <= 0:
            raise ValueError(f"sequence {self.seq_id}: max_output_tokens={self.max_output_tokens} must be > 0")

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        """Tokens generated so far."""
        return len(self.token_ids) - self.prompt_len

    @property
    def num_uncached_tokens(self) -> int:
        """Tokens not yet in the KV cache."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Whether the next iteration feeds just the last token."""
        return self.num_uncached_tokens == 1 and self.num_output_tokens > 0

    @property
    def is_finished(self) -> bool:
        """Whether the sequence has generated all its tokens."""
        return self.status is SequenceStatus.FINISHED

    def commit(self, n_new_tokens: int, sampled_token: int | None, now_s: float) -> None:
        """Record an iteration's outcome: `n_new_tokens` more tokens cached, and the token sampled (if any)."""
        self.num_computed_tokens += n_new_tokens
        if sampled_token is None:
            return
        self.token_ids.append(sampled_token)
        self.token_times_s.append(now_s)
        if self.first_token_s is None:
            self.first_token_s = now_s
        if self.num_output_tokens >= self.max_output_tokens:
            self.status = SequenceStatus.FINISHED
            self.finish_s = now_s

    def preempt(self) -> None:
        """Drop the cache progress: the sequence waits and recomputes all its tokens later."""
        self.num_computed_tokens = 0
        self.status = SequenceStatus.WAITING
