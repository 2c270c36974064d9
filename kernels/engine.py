"""Engine: the serving loop. `step()` is schedule -> run -> postprocess; `generate_static` is the static-batching loop.

Requests carry only lengths (prompt tokens, output tokens): prompt token ids are drawn from a seeded generator,
and generation runs for exactly the requested number of tokens (no end-of-sequence stop), so the work matches a
trace's lengths.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from tokenjoule.kernels.runner import ModelRunner, RunnerConfig
from tokenjoule.kernels.scheduler import ScheduledBatch, Scheduler
from tokenjoule.kernels.sequence import Sequence
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.kernels.tp import TPGroup

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """A completed request and its timestamps (engine clock, seconds since the engine started).

    Attributes:
        request_id: the id given to `add_request`.
        prompt_tokens: prompt length.
        output_tokens: tokens generated.
        arrival_s: when it was added.
        first_token_s: when its first output token was sampled.
        finish_s: when its last output token was sampled.
    """

    request_id: int
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    first_token_s: float
    finish_s: float


class Engine:
    """A minimal continuous-batching serving engine.

    Args:
        spec: the model shape.
        config: runner options (mode, device, memory, batch limits).
        seed: seed for synthetic prompt tokens.
        clock: a function returning seconds; defaults to `time.perf_counter`.
        tp: this rank's tensor-parallel group. Every rank builds an Engine and makes the same calls; the schedule
            is deterministic and every rank samples from the same gathered logits, so they stay in step.
    """

    def __init__(self, spec: ModelSpec, config: RunnerConfig, seed: int = 0, clock=time.perf_counter,
                 tp: TPGroup | None = None) -> None:
        self.spec = spec
        self.runner = ModelRunner(spec, config, tp)
        self.scheduler = Scheduler(self.runner.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self._rng = random.Random(seed)
        self._clock = clock
        self._t0 = clock()

    def now_s(self) -> float:
        """Seconds since the engine started."""
        return self._clock() - self._t0

    def make_sequence(self, seq_id: int, prompt_tokens: int, output_tokens: int, token_ids: list[int] | None = None,
                      arrival_s: float | None = None) -> Sequence:
        """A new sequence with random (or the given) prompt token ids."""
        if token_ids is None:
            token_ids = [self._rng.randrange(self.spec.vocab_size) for _ in range(prompt_tokens)]
        return Sequence(seq_id=seq_id, token_ids=list(token_ids), prompt_len=prompt_tokens,
                        max_output_tokens=output_tokens, arrival_s=self.now_s() if arrival_s is None else arrival_s)

    def add_request(self, request_id: int, prompt_tokens: int, output_tokens: int,
                    token_ids: list[int] | None = None) -> None:
        """Queue a request of the given lengths (ids are random unless given)."""
        self.scheduler.add(self.make_sequence(request_id, prompt_tokens, output_tokens, token_ids))

    @property
    def has_unfinished(self) -> bool:
        """Whether any request waits or runs."""
        return self.scheduler.has_work

    def step(self) -> list[FinishedRequest]:
        """Run one iteration: schedule -> run -> postprocess. Returns the requests that finished in it."""
        batch = self.scheduler.schedule()
        tokens = self.runner.run(batch)
        return self.postprocess(batch, tokens)

    def postprocess(self, batch: ScheduledBatch, tokens: list[int]) -> list[FinishedRequest]:
        """Commit an iteration's tokens to its sequences; free and report the ones that finished."""
        return [FinishedRequest(seq.seq_id, seq.prompt_len, seq.num_output_tokens, seq.arrival_s, seq.first_token_s,
                                seq.finish_s) for seq in self.scheduler.commit(batch, tokens, self.now_s())]

    def run_until_done(self) -> list[FinishedRequest]:
        """Step until every queued request finished."""
        finished = []
        while self.has_unfinished:
            finished.extend(self.step())
        return finished

    def generate_static(self, prompt_tokens: int, output_tokens: int, batch: int) -> list[FinishedRequest]:
        """Static batching: prefill `batch` prompts together, then decode them in lockstep until all are done.

        The whole batch is admitted at once (one prefill iteration, chunked only if it exceeds
        `max_num_batched_tokens`), and no new request joins until it finishes.
        """
        if self.has_unfinished:
            raise RuntimeError("generate_static needs an idle engine")
        base = 1 + max([-1] + [s.seq_id for s in self.scheduler.running])
        for i in range(batch):
            self.add_request(base + i, prompt_tokens, output_tokens)
        return self.run_until_done()
