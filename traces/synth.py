"""Synthetic traces: Poisson and Gamma arrivals, resampled or fixed lengths, and offline batches at t=0.

Every generator takes an explicit `numpy.random.Generator`, so the same seed gives the same trace.
Gamma inter-arrival gaps with shape k = 1/cv**2 and scale 1/(rate*k) have mean 1/rate and coefficient of variation
cv: cv=1 is Poisson, cv>1 is burstier, cv<1 more regular (the burstiness model of e.g. AlpaServe, Li et al. 2023).

Seed semantics: the generator draws all n inter-arrival gaps first, then the n resampled (input, output) rows.
`synthesize_blocks` produces the same numbers a block of rows at a time (numpy draws the same stream whatever the
sizes it is asked for, and the arrivals' cumulative sum is carried across blocks), so a file written block by block
equals the one `synthesize` builds in memory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenjoule.traces.files import ROW_GROUP_ROWS
from tokenjoule.traces.schema import Trace, TraceOptionError

ARRIVAL_PROCESSES = ("poisson", "gamma", "zero")


# The most requests a synthetic trace may have. The simulator holds a trace in memory (a table row of ~40 bytes per
# request, and a slot per request), so 10^8 requests already take several GiB; larger workloads are for
# `tokenjoule project`, which streams a trace file in blocks.
MAX_SYNTHETIC_REQUESTS = 10**8
# Rows per block of `synthesize_blocks`: a row group of a trace file, so a file written block by block is the same.
BLOCK_ROWS = ROW_GROUP_ROWS


@dataclass(frozen=True, slots=True)
class SynthSpec:
    """How to synthesize a trace.

    Attributes:
        n_requests: number of requests.
        rate_per_s: mean arrival rate, requests per second (ignored for process "zero").
        process: "poisson", "gamma" (burstiness by `cv`) or "zero" (all requests at t=0: offline batch).
        cv: coefficient of variation of inter-arrival gaps for "gamma" (1.0 = Poisson).
        input_tokens: fixed prompt length, used when no trace to resample lengths from is given.
        output_tokens: fixed output length (>= 1: the simulator generates at least one token).
    """

    n_requests: int
    rate_per_s: float = 1.0
    process: str = "poisson"
    cv: float = 1.0
    input_tokens: int = 512
    output_tokens: int = 128

    def __post_init__(self) -> None:
        if not 1 <= self.n_requests <= MAX_SYNTHETIC_REQUESTS:
            raise TraceOptionError(f"n_requests={self.n_requests} must be in 1..{MAX_SYNTHETIC_REQUESTS:,} (a "
                                   "synthetic trace is held in memory; project larger workloads from a file)")
        if self.process not in ARRIVAL_PROCESSES:
            raise TraceOptionError(f"process={self.process!r} is not one of {', '.join(ARRIVAL_PROCESSES)}")
        if self.process != "zero" and not self.rate_per_s > 0:
            raise TraceOptionError(f"rate_per_s={self.rate_per_s} must be > 0")
        if not self.cv > 0:
            raise TraceOptionError(f"cv={self.cv} must be > 0")
        if self.input_tokens < 0 or self.output_tokens < 1:
            raise TraceOptionError(f"input_tokens={self.input_tokens} must be >= 0 and output_tokens="
                                   f"{self.output_tokens} >= 1")


def poisson_arrivals(n: int, rate_per_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process: cumulative exponential gaps, the first gap included.

    Args:
        n: number of arrivals.
        rate_per_s: mean rate, requests per second.
        rng: random generator.

    Returns:
        float64 arrival times in seconds, non-decreasing.
    """
    return np.cumsum(gaps(n, "poisson", rng, rate_per_s))


def gamma_arrivals(n: int, rate_per_s: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times with Gamma-distributed gaps of mean 1/rate and coefficient of variation `cv`.

    Args:
        n: number of arrivals.
        rate_per_s: mean rate, requests per second.
        cv: coefficient of variation of the gaps (1.0 gives a Poisson process).
        rng: random generator.

    Returns:
        float64 arrival times in seconds, non-decreasing.
    """
    return np.cumsum(gaps(n, "gamma", rng, rate_per_s, cv))


def gaps(n: int, process: str, rng: np.random.Generator, rate_per_s: float = 1.0, cv: float = 1.0) -> np.ndarray:
    """Inter-arrival gaps (s) of a named process ("poisson", "gamma" or "zero"); the arrivals are their cumsum.

    Args:
        n: number of gaps.
        process: one of ARRIVAL_PROCESSES.
        rng: random generator.
        rate_per_s: mean rate for poisson/gamma.
        cv: gap coefficient of variation for gamma.

    Returns:
        float64 gaps in seconds, >= 0.
    """
    if process == "poisson":
        return rng.exponential(1.0 / rate_per_s, size=n)
    if process == "gamma":
        shape = 1.0 / cv**2
        return rng.gamma(shape, 1.0 / (rate_per_s * shape), size=n)
    if process == "zero":
        return np.zeros(n)
    raise TraceOptionError(f"process={process!r} is not one of {', '.join(ARRIVAL_PROCESSES)}")


def arrivals(n: int, process: str, rng: np.random.Generator, rate_per_s: float = 1.0, cv: float = 1.0) -> np.ndarray:
    """Arrival times (s) from a named process: the cumulative sum of its `gaps` (same arguments)."""
    return np.cumsum(gaps(n, process, rng, rate_per_s, cv))


def resample_lengths(trace: Trace, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw (input, output) pairs with replacement from a trace's empirical joint distribution.

    Pairs are drawn whole, so the correlation between prompt and output lengths is kept.

    Args:
        trace: the trace to resample from (non-empty).
        n: number of pairs.
        rng: random generator.

    Returns:
        (input_tokens, output_tokens) int32 arrays.
    """
    if len(trace) == 0:
        raise TraceOptionError(f"{trace.source}: cannot resample lengths from an empty trace")
    rows = rng.integers(0, len(trace), size=n)
    return trace.column("input_tokens")[rows], trace.column("output_tokens")[rows]


def fixed_lengths(n: int, input_tokens: int, output_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """N copies of one (input, output) pair.

    Args:
        n: number of requests.
        input_tokens: prompt length.
        output_tokens: output length.

    Returns:
        (input_tokens, output_tokens) int32 arrays.
    """
    return np.full(n, input_tokens, np.int32), np.full(n, output_tokens, np.int32)


def synthesize(spec: SynthSpec, rng: np.random.Generator, lengths_from: Trace | None = None) -> Trace:
    """A synthetic trace: arrivals from `spec`, lengths resampled from `lengths_from` or fixed by `spec`.

    Args:
        spec: what to generate.
        rng: random generator (arrivals are drawn first, then lengths).
        lengths_from: a trace whose joint (input, output) distribution to resample; None for fixed lengths.

    Returns:
        The trace, sorted by arrival, ids 0..n-1.
    """
    blocks = list(synthesize_blocks(spec, rng, lengths_from))
    table = blocks[0] if len(blocks) == 1 else pa.concat_tables(blocks).combine_chunks()
    return Trace(table, _source(spec, lengths_from))


def synthesize_blocks(spec: SynthSpec, rng: np.random.Generator, lengths_from: Trace | None = None,
                      block_rows: int = BLOCK_ROWS) -> Iterator[pa.Table]:
    """The rows `synthesize` returns, as consecutive tables of `block_rows` rows (the last one shorter).

    Memory stays at a block whatever `spec.n_requests` is. The lengths are drawn by a copy of `rng` advanced past
    all n arrival gaps (the seed semantics above); `rng` ends where `synthesize` leaves it once the last block is out.

    Args:
        spec: what to generate.
        rng: random generator.
        lengths_from: a trace whose joint (input, output) distribution to resample; None for fixed lengths.
        block_rows: rows per block.

    Yields:
        Tables with the trace's required columns, ids continuing from block to block.
    """
    n = spec.n_requests
    if lengths_from is not None and len(lengths_from) == 0:
        raise TraceOptionError(f"{lengths_from.source}: cannot resample lengths from an empty trace")
    starts = range(0, n, block_rows)
    lengths_rng = None
    if lengths_from is not None:
        lengths_rng = copy.deepcopy(rng)
        for start in starts:
            gaps(min(block_rows, n - start), spec.process, lengths_rng, spec.rate_per_s, spec.cv)
    last = 0.0  # the arrival before the block: the cumulative sum goes on from it, term by term
    for start in starts:
        rows = min(block_rows, n - start)
        times = np.cumsum(np.concatenate(([last], gaps(rows, spec.process, rng, spec.rate_per_s, spec.cv))))[1:]
        last = times[-1]
        if lengths_rng is None:
            inp, out = fixed_lengths(rows, spec.input_tokens, spec.output_tokens)
        else:
            inp, out = resample_lengths(lengths_from, rows, lengths_rng)
        yield Trace.from_columns(times, inp, out, np.arange(start, start + rows, dtype=np.int64)).table
    if lengths_rng is not None:
        rng.bit_generator.state = lengths_rng.bit_generator.state


def _source(spec: SynthSpec, lengths_from: Trace | None) -> str:
    return f"synth:{spec.process}" if lengths_from is None else f"synth:{spec.process}:{lengths_from.source}"


def batch_at_zero(n: int, input_tokens: int, output_tokens: int) -> Trace:
    """N identical requests all arriving at t=0: the offline-batch what-if.

    Args:
        n: number of requests.
        input_tokens: prompt length of each.
        output_tokens: output length of each.

    Returns:
        The trace.
    """
    return synthesize(SynthSpec(n, process="zero", input_tokens=input_tokens, output_tokens=output_tokens),
                      np.random.default_rng(0))
