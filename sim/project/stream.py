"""Canonical (arrival_s, input_tokens, output_tokens) record batches from a trace file or a loaded Trace.

The projection reads a trace once, batch by batch, in memory independent of its length, through the trace
package's streaming reader (`traces.batches.BatchReader`, which `tokenjoule trace stats` uses too), so a streamed
file gives the arrays `read_trace` would give with the same load options (the mapping, units, `--zero-output`,
synthesized `--arrivals`). Time windows need arrivals in order: an unsorted file of at most `max_sort_rows` rows
is loaded and sorted in memory, a larger one is refused, and `--unsorted refuse` refuses any. Spreading arrivals
(`--spread-buckets-s`) moves them out of order, so it takes the in-memory route too, under the same size limit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenjoule.traces.batches import BatchReader
from tokenjoule.traces.checks import TraceNote
from tokenjoule.traces.files import iter_batches
from tokenjoule.traces.loaders import LoadOptions, plan_load, read_planned
from tokenjoule.traces.schema import Trace, TraceFormatError, TraceOptionError

logger = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # arrival_s float64, input_tokens int64, output_tokens int64
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What reading the trace did.

    Attributes:
        source: file path or bundled name.
        rows_read: data rows in the source.
        rows_dropped: rows dropped while reading (0 output tokens).
        sorted_in_memory: True when the source was unsorted and was loaded and sorted.
        notes: out-of-order arrivals and repeated request ids, with counts.
    """

    source: str
    rows_read: int
    rows_dropped: int
    sorted_in_memory: bool = False
    notes: tuple[TraceNote, ...] = ()


class _Unsorted(Exception):
    """Internal: the streamed arrivals went back in time."""


def trace_batches(trace: Trace, batch_rows: int = 1 << 20) -> Iterator[Batch]:
    """Record batches of a loaded (sorted) trace."""
    for batch in trace.table.select(["arrival_s", "input_tokens", "output_tokens"]).to_batches(batch_rows):
        yield (batch.column(0).to_numpy(), batch.column(1).to_numpy().astype(np.int64),
               batch.column(2).to_numpy().astype(np.int64))


class FileStream:
    """Iterate canonical batches of a trace file once; `info` is filled in when the iteration ends.

    Args:
        path_or_name: file or bundled trace name.
        fmt: format name or None to detect.
        options: load options (spreading arrivals loads the whole table).
        batch_rows: rows per Parquet batch.
        max_sort_rows: largest trace to sort in memory (unsorted, or spread).
        progress: called as progress(done, total) after each batch.
    """

    def __init__(self, path_or_name: str | Path, fmt: str | None = None, options: LoadOptions | None = None,
                 batch_rows: int = 1 << 20, max_sort_rows: int = 10_000_000,
                 progress: ProgressFn | None = None) -> None:
        self.options = options or LoadOptions()
        self.plan = plan_load(path_or_name, fmt, self.options)
        self.batch_rows, self.max_sort_rows, self.progress = batch_rows, max_sort_rows, progress
        self.info: StreamInfo | None = None

    @property
    def source(self) -> str:
        """The trace's name for messages."""
        return self.plan.source

    def batches(self) -> Iterator[Batch]:
        """Yield batches in arrival order (an unsorted file stops the iteration; see `run_stream`)."""
        reader = BatchReader(self.plan, self.options, self.batch_rows, progress=self.progress)
        for batch in reader:
            if reader.checks.unsorted_rows:
                raise _Unsorted()
            yield batch.arrival_s, batch.input_tokens, batch.output_tokens
        self.info = StreamInfo(self.plan.source, reader.rows_read, reader.rows_dropped, notes=reader.checks.notes())

    def _loaded(self) -> Iterator[Batch]:
        trace, report = read_planned(self.plan, self.options)
        self.info = StreamInfo(report.source, report.rows_read, report.rows_dropped, not report.was_sorted,
                               report.notes)
        yield from trace_batches(trace, self.batch_rows)


def goes_back(arrival_s: np.ndarray, last_s: float) -> bool:
    """True when a block's arrivals (after `last_s`, the previous block's last) are out of order."""
    return bool(len(arrival_s)) and (arrival_s[0] < last_s or bool(np.any(np.diff(arrival_s) < 0)))


def run_stream(stream: FileStream, consume: Callable[[Iterator[Batch]], object]) -> object:
    """Feed `stream`'s batches to `consume`; on unsorted arrivals, sort in memory (small traces) and run it again.

    Args:
        stream: the file stream.
        consume: a function that reads every batch and returns a result; it must start from scratch when called.

    Returns:
        What `consume` returned.

    Raises:
        TraceFormatError: unsorted arrivals in a trace larger than `max_sort_rows`.
        TraceOptionError: `--spread-buckets-s` on a trace larger than `max_sort_rows`.
    """
    spread = stream.options.whole_table
    if not spread:
        try:
            return consume(stream.batches())
        except _Unsorted:
            pass
    if _count_rows(stream, stream.max_sort_rows + 1) > stream.max_sort_rows:
        if spread:
            raise TraceOptionError(f"--spread-buckets-s: spreading moves arrivals out of order, so the trace is "
                                   f"sorted in memory, and {stream.source} has more than {stream.max_sort_rows:,} "
                                   "rows; spread a slice of it (`tokenjoule trace convert --head N` first)")
        raise TraceFormatError(f"{stream.source}: arrivals are not sorted and the trace has more than "
                               f"{stream.max_sort_rows} rows; sort it first (e.g. `tokenjoule trace convert`)")
    logger.info("%s: %s; loading the trace to sort it", stream.source,
                "spreading arrivals" if spread else "arrivals are not sorted")
    return consume(stream._loaded())


def _count_rows(stream: FileStream, stop_at: int) -> int:
    """Rows in the file, counting no further than `stop_at`."""
    rows = 0
    for table, _, _ in iter_batches(stream.plan.sniffed, stream.plan.cmap.source_columns[:1], stream.batch_rows):
        rows += table.num_rows
        if rows >= stop_at:
            break
    return rows
