"""Measure the serving loop's host work per iteration (plan it, then book its tokens) on the calibrating machine.

The GPU sweep times `runner.run` alone: input metadata, launch, sampling, sync. A serving loop also runs
`Scheduler.schedule` before it and `Scheduler.commit` after it, serially, and that host time grows with the batch
and with the CPU's speed. `measure_serving_host` serves synthetic requests through the engine's real loop (the
model runs for real, so the host code meets the caches and thread wake-ups a serving loop meets) and times the two
host phases of every iteration; `fit_host_overhead` fits `a + b * seqs + p * prefill_seqs` to binned medians
(`profile.HostOverhead`), which the simulator adds to every iteration.

A tight loop of the scheduler alone (no model between iterations) read 2-3x less host time than serving did on the
same H200 host (validation/README.md), so the model must run. Torch-free: the model runner comes in as an object.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from tokenjoule.calibrate.fit import solve_relative
from tokenjoule.calibrate.profile import HostOverhead
from tokenjoule.kernels.scheduler import ScheduledBatch, Scheduler
from tokenjoule.kernels.sequence import Sequence as EngineSequence

METHOD = ("synthetic requests served through the engine's loop (all arriving at once, once per policy); "
          "time.perf_counter around Scheduler.schedule + IterationShape and around Scheduler.commit of every "
          "iteration; medians per (prefill sequences, sequences) bin; fit a + b*seqs + p*prefill_seqs by NNLS on "
          "relative error")
# Sequence-count bins of the fitted medians: [lo, hi), powers of two.
SEQ_BINS = tuple((1 << i, 1 << (i + 1)) for i in range(11))


class ModelRunner(Protocol):
    """What the measurement needs from the engine's model runner (`kernels.runner.ModelRunner`)."""

    block_manager: Any

    def run(self, batch: ScheduledBatch) -> list[int]:
        """Run one iteration and return its sampled tokens."""


def synthetic_requests(n: int, seed: int = 0, max_prompt: int = 256, max_output: int = 96) -> list[tuple[int, int]]:
    """(prompt tokens, output tokens) of `n` requests, varied so that batches ramp up and drain."""
    rng = random.Random(seed)
    return [(rng.randint(16, max_prompt), rng.randint(16, max_output)) for _ in range(n)]


def measure_serving_host(runner: ModelRunner, scheduler: Scheduler, requests: Sequence[tuple[int, int]],
                         vocab_size: int, seed: int = 0,
                         clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    """Serve `requests` (all arriving at once) with `scheduler` over `runner`; one row per iteration.

    Rows hold `seqs` (prefill chunks plus decodes), `prefill_seqs` and `host_s` (schedule plus commit). The
    scheduler must be idle and backed by the runner's block manager; it is idle again afterwards.
    """
    if scheduler.has_work:
        raise RuntimeError("measure_serving_host needs an idle scheduler")
    rng = random.Random(seed)
    for i, (prompt, output) in enumerate(requests):
        ids = [rng.randrange(vocab_size) for _ in range(prompt)]
        scheduler.add(EngineSequence(seq_id=1_000_000 + i, token_ids=ids, prompt_len=prompt, max_output_tokens=output))
    rows = []
    while scheduler.has_work:
        a = clock()
        batch = scheduler.schedule()
        batch.to_shape()  # a serving loop logs what it ran
        b = clock()
        tokens = runner.run(batch)
        c = clock()
        scheduler.commit(batch, tokens, c)
        d = clock()
        rows.append({"seqs": len(batch.prefill) + len(batch.decode), "prefill_seqs": len(batch.prefill),
                     "host_s": (b - a) + (d - c)})
    return rows


def binned_points(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median host seconds per (has prefill, sequence-count bin); each point keeps its bin's median counts."""
    points = []
    for with_prefill in (False, True):
        for lo, hi in SEQ_BINS:
            group = [r for r in rows if (r["prefill_seqs"] > 0) == with_prefill and lo <= r["seqs"] < hi]
            if group:
                points.append({"seqs": float(np.median([r["seqs"] for r in group])),
                               "prefill_seqs": float(np.median([r["prefill_seqs"] for r in group])),
                               "median_s": float(np.median([r["host_s"] for r in group])),
                               "p90_s": float(np.percentile([r["host_s"] for r in group], 90)),
                               "iterations": len(group)})
    return points


def fit_host_overhead(points: Sequence[dict[str, Any]], method: str = METHOD) -> HostOverhead:
    """NNLS fit of `a + b*seqs + p*prefill_seqs` to the points' medians, minimising relative error."""
    if len(points) < 3:
        raise ValueError(f"need >= 3 host points to fit 3 coefficients, got {len(points)}")
    n = np.array([p["seqs"] for p in points], dtype=np.float64)
    pre = np.array([p.get("prefill_seqs", 0.0) for p in points], dtype=np.float64)
    y = np.array([p["median_s"] for p in points], dtype=np.float64)
    per_iter, per_seq, per_prefill = solve_relative(np.column_stack([np.ones_like(n), n, pre]), y).tolist()
    return HostOverhead(per_iter, per_seq, 0.0, tuple(dict(p) for p in points), method,
                        per_prefill_seq_s=per_prefill)
