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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tokenjoule.traces.files import ROW_GROUP_ROWS
from tokenjoule.traces.schema import Trace, TraceOptionError

ARRIVAL_PROCESSES = ("poisson", "gamma", "zero")


# The most requests a synthetic trace may have. The simulator holds a trace in memory (a table row of ~40 bytes per
# request, and a slot per request), so 10^8 requests already take several GiB; larger workloads are for
# `tokenjoule project`, which streams a trace file in blocks.
MAX_SYNTHETIC_REQUESTS = 10**8
# How `tokenjoule trace synth` spells each SynthSpec field in messages (flag and a space before the value);
# `simulate --synthetic` passes its own spellings (`--synthetic n=`) to `check_synth`.
SYNTH_FLAGS = {"n_requests": "--requests ", "rate_per_s": "--rate ", "process": "--process ", "cv": "--cv ",
               "input_tokens": "--input-tokens ", "output_tokens": "--output-tokens "}
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
        check_synth({name: getattr(self, name) for name in SYNTH_FLAGS})


def check_synth(values: Mapping[str, Any], flags: Mapping[str, str] = SYNTH_FLAGS) -> None:
    """Refuse an impossible synthetic trace with one line naming the flag the user typed and its value.

    Args:
        values: SynthSpec field -> value, every field of SYNTH_FLAGS.
        flags: SynthSpec field -> how the command line spells it, value appended (default: `trace synth`'s flags).

    Raises:
        TraceOptionError: the first field out of its range.
    """
    def refuse(name: str, rule: str) -> None:
        value = values[name]
        raise TraceOptionError(f"{flags[name]}{format(value, 'g') if isinstance(value, float) else value}: {rule}")

    if not 1 <= values["n_requests"] <= MAX_SYNTHETIC_REQUESTS:
        refuse("n_requests", f"must be in 1..{MAX_SYNTHETIC_REQUESTS:,} (a synthetic trace is held in memory; "
                             "project larger workloads from a file: `tokenjoule project` streams it)")
    if values["process"] not in ARRIVAL_PROCESSES:
        refuse("process", f"must be one of {', '.join(ARRIVAL_PROCESSES)}")
    if values["process"] != "zero" and not values["rate_per_s"] > 0:
        refuse("rate_per_s", "must be > 0 requests/s")
    if not values["cv"] > 0:
        refuse("cv", "must be > 0")
    if values["input_tokens"] < 0:
        refuse("input_tokens", "must be >= 0")
    if values["output_tokens"] < 1:
        refuse("output_tokens", "must be >= 1 (the simulator generates at least one token)")


def arrival_gaps(n: int, process: str, rng: np.random.Generator, rate_per_s: float = 1.0,
                 cv: float = 1.0) -> np.ndarray:
    """Gaps between consecutive arrivals (the first one measured from t=0) of a named process.

    Args:
        n: number of gaps.
        process: "poisson" (exponential gaps), "gamma" (Gamma gaps of coefficient of variation `cv`) or "zero".
        rng: random generator; each gap is one draw, so drawing n1 then n2 gaps gives the n1 + n2 of one call.
        rate_per_s: mean rate, requests per second (mean gap 1 / rate).
        cv: coefficient of variation of Gamma gaps (shape 1 / cv**2; 1.0 gives Poisson).

    Returns:
        float64 gaps, seconds.
    """
    if process == "poisson":
        return rng.exponential(1.0 / rate_per_s, size=n)
    if process == "gamma":
        shape = 1.0 / cv**2
        return rng.gamma(shape, 1.0 / (rate_per_s * shape), size=n)
    if process == "zero":
        return np.zeros(n)
    raise TraceOptionError(f"--arrivals {process!r}: must be one of {', '.join(ARRIVAL_PROCESSES)}")


def poisson_arrivals(n: int, rate_per_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process: cumulative exponential gaps, the first gap included.

    Args:
        n: number of arrivals.
        rate_per_s: mean rate, requests per second.
        rng: random generator.

    Returns:
        float64 arrival times in seconds, non-decreasing.
    """
    return arrivals(n, "poisson", rng, rate_per_s)


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
    return arrivals(n, "gamma", rng, rate_per_s, cv)


def arrivals(n: int, process: str, rng: np.random.Generator, rate_per_s: float = 1.0, cv: float = 1.0) -> np.ndarray:
    """Arrival times (s) from a named process: the running sum of its `arrival_gaps` (same arguments)."""
    return np.cumsum(arrival_gaps(n, process, rng, rate_per_s, cv))


class ArrivalClock:
    """Arrival times drawn piece by piece, for streams: the pieces join into exactly what one `arrivals` call gives.

    Each piece draws its gaps from the same generator and adds them one by one onto the last arrival so far, the
    order in which one `np.cumsum` adds them, so the floats are identical, not just close.

    Args:
        process: one of ARRIVAL_PROCESSES.
        rng: random generator (its state moves on with every piece).
        rate_per_s: mean rate for poisson/gamma.
        cv: gap coefficient of variation for gamma.
    """

    def __init__(self, process: str, rng: np.random.Generator, rate_per_s: float = 1.0, cv: float = 1.0) -> None:
        self.process, self.rng, self.rate_per_s, self.cv = process, rng, rate_per_s, cv
        self.last_s = 0.0

    def next(self, n: int) -> np.ndarray:
        """The next `n` arrival times, seconds."""
        gaps = arrival_gaps(n, self.process, self.rng, self.rate_per_s, self.cv)
        times = np.cumsum(np.concatenate(([self.last_s], gaps)))[1:]
        if n:
            self.last_s = float(times[-1])
        return times


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
            arrival_gaps(min(block_rows, n - start), spec.process, lengths_rng, spec.rate_per_s, spec.cv)
    clock = ArrivalClock(spec.process, rng, spec.rate_per_s, spec.cv)  # the cumulative sum goes on block to block
    for start in starts:
        rows = min(block_rows, n - start)
        times = clock.next(rows)
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
