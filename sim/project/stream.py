"""Canonical (arrival_s, input_tokens, output_tokens) record batches from a trace file or a loaded Trace.

The projection reads a trace once, batch by batch, in memory independent of its length. It reuses the trace
package's pieces (`plan_load`, `iter_batches`, `convert`) exactly as `tokenjoule.traces.stream.scan` does, so a
streamed file gives the arrays `load_trace` would give: rows with 0 output tokens dropped (or kept, per
`LoadOptions.zero_output`), arrivals re-zeroed at the first one. Time windows need arrivals in order: an unsorted
file of at most `max_sort_rows` rows is loaded and sorted in memory; a larger one is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenjoule.traces.columns import Converted, convert
from tokenjoule.traces.files import iter_batches
from tokenjoule.traces.loaders import LoadOptions, plan_load, read_trace
from tokenjoule.traces.schema import Trace, TraceFormatError

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
    """

    source: str
    rows_read: int
    rows_dropped: int
    sorted_in_memory: bool = False


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
        options: load options (arrival synthesis or spreading load the whole table).
        batch_rows: rows per Parquet batch.
        max_sort_rows: largest unsorted trace to sort in memory.
        progress: called as progress(done, total) after each batch.
    """

    def __init__(self, path_or_name: str | Path, fmt: str | None = None, options: LoadOptions | None = None,
                 batch_rows: int = 1 << 20, max_sort_rows: int = 10_000_000,
                 progress: ProgressFn | None = None) -> None:
        self.options = options or LoadOptions()
        self.plan = plan_load(path_or_name, fmt, self.options)
        self.path_or_name, self.fmt = path_or_name, fmt
        self.batch_rows, self.max_sort_rows, self.progress = batch_rows, max_sort_rows, progress
        self.info: StreamInfo | None = None

    @property
    def source(self) -> str:
        """The trace's name for messages."""
        return self.plan.source

    def batches(self) -> Iterator[Batch]:
        """Yield batches in arrival order (an unsorted file stops the iteration; see `run_stream`)."""
        if self.options.whole_table or self.plan.cmap.arrival_s is None:
            yield from self._loaded()
            return
        read = dropped = 0
        last, ref = -np.inf, None
        for table, done, total in iter_batches(self.plan.sniffed, self.plan.cmap.source_columns, self.batch_rows):
            conv = convert(table, self.plan.cmap, self.plan.source, read, ref)
            ref = conv.ref
            if goes_back(conv.arrival_s, last):
                raise _Unsorted()
            if len(conv.arrival_s):
                last = float(conv.arrival_s[-1])
            read += table.num_rows
            batch, n_dropped = kept_rows(conv, self.options.zero_output)
            dropped += n_dropped
            if self.progress is not None:
                self.progress(done, total)
            yield batch
        if read == 0:
            raise TraceFormatError(f"{self.plan.source}: no requests (the file has a header but no rows)")
        self.info = StreamInfo(self.plan.source, read, dropped)

    def _loaded(self, unsorted: bool = False) -> Iterator[Batch]:
        trace, report = read_trace(self.path_or_name, self.fmt, options=self.options)
        self.info = StreamInfo(report.source, report.rows_read, report.rows_dropped, unsorted)
        yield from trace_batches(trace, self.batch_rows)


def goes_back(arrival_s: np.ndarray, last_s: float) -> bool:
    """True when a block's arrivals (after `last_s`, the previous block's last) are out of order."""
    return bool(len(arrival_s)) and (arrival_s[0] < last_s or bool(np.any(np.diff(arrival_s) < 0)))


def kept_rows(conv: Converted, zero_output: str) -> tuple[Batch, int]:
    """A converted block's canonical rows (0-output rows dropped if `zero_output` is "drop"), and how many dropped."""
    arrival, inp, out = conv.arrival_s, conv.input_tokens, conv.output_tokens
    if zero_output == "drop":
        keep = out != 0
        if not keep.all():
            return (arrival[keep], inp[keep], out[keep]), int(len(keep) - keep.sum())
    return (arrival, inp, out), 0


def run_stream(stream: FileStream, consume: Callable[[Iterator[Batch]], object]) -> object:
    """Feed `stream`'s batches to `consume`; on unsorted arrivals, sort in memory (small traces) and run it again.

    Args:
        stream: the file stream.
        consume: a function that reads every batch and returns a result; it must start from scratch when called.

    Returns:
        What `consume` returned.

    Raises:
        TraceFormatError: unsorted arrivals in a trace larger than `max_sort_rows`.
    """
    try:
        return consume(stream.batches())
    except _Unsorted:
        pass
    if _count_rows(stream, stream.max_sort_rows + 1) > stream.max_sort_rows:
        raise TraceFormatError(f"{stream.source}: arrivals are not sorted and the trace has more than "
                               f"{stream.max_sort_rows} rows; sort it first (e.g. `tokenjoule trace convert`)")
    logger.info("%s: arrivals are not sorted; loading the trace to sort it", stream.source)
    return consume(stream._loaded(unsorted=True))


def _count_rows(stream: FileStream, stop_at: int) -> int:
    """Rows in the file, counting no further than `stop_at`."""
    rows = 0
    for table, _, _ in iter_batches(stream.plan.sniffed, stream.plan.cmap.source_columns[:1], stream.batch_rows):
        rows += table.num_rows
        if rows >= stop_at:
            break
    return rows
