"""Stats and binning in one pass over record batches, in constant memory, for traces larger than memory.

Token percentiles are exact: token counts are integers, so a histogram (bincount up to `cap_tokens`, with values above
the cap kept aside) gives numpy's linear-interpolation percentiles exactly. Burstiness needs arrivals in order: the
inter-arrival CV (gap std / gap mean) and the index of dispersion of per-second counts (variance / mean over the whole
1-s windows from the first arrival) are accumulated batch by batch; once an arrival goes back in time, they are not
reported.
A loaded `Trace` goes through the same accumulators (`trace_stats`), so streamed and in-memory figures agree.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tokenjoule.traces.batches import BatchReader
from tokenjoule.traces.binning import BinCounts, BinSpec, bin_arrays, empty_counts, merge
from tokenjoule.traces.files import ProgressFn
from tokenjoule.traces.loaders import LoadOptions, LoadPlan, plan_load, read_planned
from tokenjoule.traces.schema import Trace, TraceFormatError
from tokenjoule.traces.stream_acc import ArrivalStats, TokenHistogram, TokenSummary

logger = logging.getLogger(__name__)

__all__ = ["TraceStats", "ScanResult", "TokenSummary", "scan", "trace_stats", "scan_trace"]


@dataclass(frozen=True, slots=True)
class TraceStats:
    """Summary of a trace.

    Attributes:
        source: file or bundled name.
        rows: requests counted.
        span_s: last minus first arrival, seconds.
        rate_per_s: rows / span_s (None for a zero span).
        input_tokens: prompt-length summary.
        output_tokens: output-length summary.
        interarrival_cv: std / mean of the gaps between consecutive arrivals (1 for Poisson); None if unsorted.
        dispersion_1s: variance / mean of per-second arrival counts (1 for Poisson); None if unsorted.
        sorted: whether arrivals never went back in time.
    """

    source: str
    rows: int
    span_s: float
    rate_per_s: float | None
    input_tokens: TokenSummary
    output_tokens: TokenSummary
    interarrival_cv: float | None
    dispersion_1s: float | None
    sorted: bool

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one pass produced: stats, bins (when asked), the rows dropped on the way, and notes for the user."""

    stats: TraceStats
    bins: BinCounts | None
    rows_read: int
    rows_dropped: int
    notes: tuple[str, ...] = ()


class _Scanner:
    """Mutable accumulator for one pass: feed canonical arrays batch by batch, then `result()`."""

    def __init__(self, source: str, spec: BinSpec | None, window_s: float | None, cap_tokens: int) -> None:
        self.source = source
        self.inp, self.out = TokenHistogram(cap_tokens), TokenHistogram(cap_tokens)
        self.arrivals = ArrivalStats()
        self.spec, self.window_s = spec, window_s
        self.bins = empty_counts(spec, window_s) if spec is not None else None
        self.rows_read = self.rows_dropped = 0

    def add(self, arrival_s: np.ndarray, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        """Feed a batch; arrivals in seconds from the trace start (time windows are counted from 0)."""
        self.inp.add(input_tokens)
        self.out.add(output_tokens)
        self.arrivals.add(arrival_s)
        if self.bins is not None:
            if self.window_s is not None and not self.arrivals.sorted:
                return  # windows need order; `scan` sorts in memory or refuses once the pass is over
            self.bins = merge(self.bins, bin_arrays(input_tokens, output_tokens, self.spec, arrival_s, self.window_s))

    def result(self, notes: tuple[str, ...] = ()) -> ScanResult:
        if self.arrivals.n == 0:
            raise TraceFormatError(f"{self.source}: no requests")
        a = self.arrivals
        span = a.span_s
        stats = TraceStats(self.source, a.n, span, a.n / span if span > 0 else None, self.inp.summary(),
                           self.out.summary(), a.interarrival_cv, a.dispersion_1s, a.sorted)
        return ScanResult(stats, self.bins, self.rows_read, self.rows_dropped, notes)


def trace_stats(trace: Trace) -> TraceStats:
    """Stats of a loaded trace (same accumulators as streaming)."""
    return scan_trace(trace).stats


def scan_trace(trace: Trace, spec: BinSpec | None = None, window_s: float | None = None,
               cap_tokens: int = 1 << 20) -> ScanResult:
    """Stats (and bins when `spec` is given) of a loaded trace.

    Args:
        trace: the trace.
        spec: bins, or None for stats only.
        window_s: bin per time window of this many seconds.
        cap_tokens: histogram cap (see TokenHistogram).

    Returns:
        The result.
    """
    scanner = _Scanner(trace.source, spec, window_s, cap_tokens)
    for batch in trace.table.to_batches(max_chunksize=1 << 20):
        scanner.add(*(batch.column(name).to_numpy() for name in ("arrival_s", "input_tokens", "output_tokens")))
    scanner.rows_read = len(trace)
    return scanner.result()


def scan(path_or_name: str | Path, fmt: str | None = None, *, spec: BinSpec | None = None,
         window_s: float | None = None, options: LoadOptions | None = None, progress: ProgressFn | None = None,
         batch_rows: int = 1 << 20, block_bytes: int = 1 << 24, cap_tokens: int = 1 << 20,
         max_sort_rows: int = 10_000_000) -> ScanResult:
    """Stats and (optionally) bins of a trace file in one streamed pass, in memory independent of its length.

    The load options apply as `read_trace` applies them (`BatchReader`); spreading arrivals needs the whole table,
    so that option loads it instead, then scans it. Unsorted arrivals are refused with `options.unsorted ==
    "refuse"`; otherwise a trace of at most `max_sort_rows` rows is loaded and sorted, and a larger one is counted
    without burstiness figures (time windows then fail); `notes` says which, with counts, and counts repeated
    request ids.

    Args:
        path_or_name: file or bundled name.
        fmt: format name, or None to detect.
        spec: bins, or None for stats only.
        window_s: bin per window of this many seconds (needs sorted arrivals).
        options: load options.
        progress: called as progress(done, total) after each batch (rows for Parquet, bytes otherwise).
        batch_rows: rows per Parquet batch.
        block_bytes: bytes per CSV/JSONL block.
        cap_tokens: token histogram cap.
        max_sort_rows: largest unsorted trace to sort in memory.

    Returns:
        The result.
    """
    options = options or LoadOptions()
    plan = plan_load(path_or_name, fmt, options)
    if options.whole_table:
        return _scan_loaded(plan, options, spec, window_s, cap_tokens)
    scanner = _Scanner(plan.source, spec, window_s, cap_tokens)
    reader = BatchReader(plan, options, batch_rows, block_bytes, progress)
    for batch in reader:
        scanner.add(batch.arrival_s, batch.input_tokens, batch.output_tokens)
    scanner.rows_read, scanner.rows_dropped = reader.rows_read, reader.rows_dropped
    unsorted = reader.checks.unsorted_rows > 0
    if unsorted and reader.rows_read <= max_sort_rows:
        logger.info("%s: arrivals are not sorted; loading %d rows to sort them", plan.source, reader.rows_read)
        return _scan_loaded(plan, options, spec, window_s, cap_tokens)
    if unsorted and window_s is not None and spec is not None:
        raise TraceFormatError(f"{plan.source}: binning per time window needs sorted arrivals, and the trace is "
                               f"too large to sort in memory; sort it first")
    logger.info("%s: %s, %d rows streamed, %d dropped (0 output tokens)%s", plan.source, plan.fmt,
                reader.rows_read, reader.rows_dropped, ", arrivals unsorted" if unsorted else "")
    notes = reader.checks.notes(f"not sorted: over {max_sort_rows:,} rows to sort in memory, so burstiness figures "
                                "are left out (`tokenjoule trace convert` sorts)")
    return scanner.result(tuple(note.message for note in notes))


def _scan_loaded(plan: LoadPlan, options: LoadOptions, spec: BinSpec | None, window_s: float | None,
                 cap_tokens: int) -> ScanResult:
    trace, report = read_planned(plan, options)
    result = scan_trace(trace, spec, window_s, cap_tokens)
    notes = tuple(note.message for note in report.notes)
    return ScanResult(result.stats, result.bins, report.rows_read, report.rows_dropped, notes)
