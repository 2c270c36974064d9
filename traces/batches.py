"""A trace file's canonical rows in one streamed pass, with the load options applied as `read_trace` applies them.

The streaming twin of `loaders.read_planned`, for `trace stats|bin` and `project`: the same columns, units,
dropped rows (`--zero-output`) and synthesized arrivals (`--arrivals`, drawn batch by batch into exactly the
times a whole load draws), block by block, in memory independent of the trace's length. Spreading arrivals
(`--spread-buckets-s`) moves them out of order, so it needs the whole trace (`LoadOptions.whole_table`); callers
load instead. Arrivals out of order are refused here under `--unsorted refuse`; otherwise they are counted
(`checks`, with repeated request ids) and the caller decides what to do about them.

Arrivals read from the file are measured from its first row, the dropped ones included (a whole load measures
them from the first row kept); synthesized ones start at 0 at the first row kept, as a whole load does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from tokenjoule.traces import synth
from tokenjoule.traces.checks import TraceChecks
from tokenjoule.traces.columns import convert
from tokenjoule.traces.files import ProgressFn, iter_batches, located_rows
from tokenjoule.traces.loaders import LoadOptions, LoadPlan, arrival_source, unsorted_error
from tokenjoule.traces.schema import TraceFormatError


class RowBatch(NamedTuple):
    """Canonical rows of one block, after drops (arrays of one length)."""

    arrival_s: np.ndarray  # float64 seconds
    input_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    request_id: np.ndarray | None  # int64 ids from the source, None when it has none (ids are then row numbers)


def kept_rows(batch: RowBatch, zero_output: str) -> tuple[RowBatch, np.ndarray | None]:
    """A block's rows after `--zero-output` ("drop": rows with 0 output tokens go), and the kept rows' positions.

    Returns:
        (kept rows, None when every row is kept, else the positions of the kept ones in `batch`).
    """
    if zero_output != "drop" or bool(np.all(batch.output_tokens != 0)):
        return batch, None
    rows = np.flatnonzero(batch.output_tokens != 0)
    return RowBatch(*(None if a is None else a[rows] for a in batch)), rows


class BatchReader:
    """Read a trace file once, block by block, with the load options applied; the counts fill in as rows pass.

    Args:
        plan: the resolved source (`loaders.plan_load`).
        options: load options; not `whole_table` ones.
        batch_rows: rows per Parquet batch.
        block_bytes: bytes per CSV/JSONL block.
        progress: called as progress(done, total) after each batch.

    Attributes:
        rows_read: data rows read so far.
        rows_dropped: rows dropped so far (0 output tokens under `--zero-output drop`).
        checks: out-of-order arrivals and repeated request ids among the rows kept.
    """

    def __init__(self, plan: LoadPlan, options: LoadOptions, batch_rows: int = 1 << 20, block_bytes: int = 1 << 24,
                 progress: ProgressFn | None = None) -> None:
        if options.whole_table:
            raise ValueError("spreading arrivals needs the whole trace in memory: load it with read_planned")
        self.plan, self.options = plan, options
        self.batch_rows, self.block_bytes, self.progress = batch_rows, block_bytes, progress
        self.rows_read = self.rows_dropped = 0
        self.checks = TraceChecks()

    def __iter__(self) -> Iterator[RowBatch]:
        """Yield each block's kept rows; a file without data rows is a TraceFormatError at the end."""
        plan, opts = self.plan, self.options
        arrival_source(plan, opts)  # refuse an impossible --arrivals choice before reading anything
        clock = None
        if plan.cmap.arrival_s is None:
            clock = synth.ArrivalClock(opts.arrivals, np.random.default_rng(opts.seed), opts.rate_per_s or 1.0, opts.cv)
        ref = first_kept = None
        with located_rows(plan.sniffed):
            for table, done, total in iter_batches(plan.sniffed, plan.cmap.source_columns, self.batch_rows,
                                                   self.block_bytes):
                conv = convert(table, plan.cmap, plan.source, self.rows_read, ref)
                ref = conv.ref
                kept, rows = kept_rows(RowBatch(conv.arrival_s if clock is None else clock.next(table.num_rows),
                                                conv.input_tokens, conv.output_tokens, conv.request_id),
                                       opts.zero_output)
                self.rows_dropped += table.num_rows - len(kept.arrival_s)
                if clock is not None and plan.cmap.rezero and len(kept.arrival_s):
                    first_kept = kept.arrival_s[0] if first_kept is None else first_kept
                    kept = kept._replace(arrival_s=kept.arrival_s - first_kept)
                late = self.checks.add(kept.arrival_s, kept.request_id)
                if late is not None and opts.unsorted == "refuse":
                    raise unsorted_error(plan, self.rows_read + (late if rows is None else int(rows[late])) + 1)
                self.rows_read += table.num_rows
                if self.progress is not None:
                    self.progress(done, total)
                yield kept
        if self.rows_read == 0:
            raise TraceFormatError(f"{plan.source}: no requests (the file has a header but no rows)")
