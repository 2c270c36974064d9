"""Pure transforms of a trace: rate scaling, time-window slicing, head. Each returns a new Trace and a report."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenjoule.traces.schema import Trace, TraceOptionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TransformReport:
    """What a transform changed.

    Attributes:
        op: transform name and arguments, e.g. "scale_rate(2.0)".
        rows_in: rows before.
        rows_out: rows after.
        span_in_s: arrival span before, seconds.
        span_out_s: arrival span after, seconds.
    """

    op: str
    rows_in: int
    rows_out: int
    span_in_s: float
    span_out_s: float

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (f"{self.op}: {self.rows_in} -> {self.rows_out} rows, span {self.span_in_s:.1f} -> "
                f"{self.span_out_s:.1f} s")


def _report(op: str, before: Trace, after: Trace) -> TransformReport:
    report = TransformReport(op, len(before), len(after), before.span_s, after.span_s)
    logger.info("%s: %s", before.source, report.summary())
    return report


def scale_rate(trace: Trace, factor: float) -> tuple[Trace, TransformReport]:
    """Multiply the arrival rate by `factor` (arrival times divided by it); lengths unchanged.

    Args:
        trace: the trace.
        factor: rate multiplier, > 0 (2.0 = twice as many requests per second).

    Returns:
        (new trace, report).
    """
    if not factor > 0:
        raise TraceOptionError(f"--scale-rate {factor:g}: must be > 0")
    arrival = pc.divide(trace.table.column("arrival_s"), float(factor))
    table = trace.table.set_column(trace.table.schema.get_field_index("arrival_s"), "arrival_s", arrival)
    out = Trace(table, trace.source)
    return out, _report(f"scale_rate({factor})", trace, out)


def slice_window(trace: Trace, start_s: float, end_s: float) -> tuple[Trace, TransformReport]:
    """Keep requests arriving in [start_s, end_s) and shift times so that start_s becomes 0.

    Args:
        trace: the trace.
        start_s: window start, seconds from the trace start.
        end_s: window end (exclusive), seconds; > start_s.

    Returns:
        (new trace, report).
    """
    if not end_s > start_s:
        raise TraceOptionError(f"--end-s {end_s:g}: must be > --start-s {start_s:g}")
    arrival = trace.table.column("arrival_s").to_numpy()
    lo, hi = np.searchsorted(arrival, [start_s, end_s], side="left")  # trace is sorted by arrival
    table = trace.table.slice(int(lo), int(hi - lo))
    shifted = pc.subtract(table.column("arrival_s"), float(start_s))
    table = table.set_column(table.schema.get_field_index("arrival_s"), "arrival_s", shifted)
    out = Trace(table.combine_chunks() if table.num_rows else _empty_like(trace), trace.source)
    return out, _report(f"slice_window({start_s}, {end_s})", trace, out)


def head(trace: Trace, n: int) -> tuple[Trace, TransformReport]:
    """The first `n` requests by arrival.

    Args:
        trace: the trace.
        n: number of requests to keep (>= 0).

    Returns:
        (new trace, report).
    """
    if n < 0:
        raise TraceOptionError(f"--head {n}: must be >= 0")
    out = Trace(trace.table.slice(0, n), trace.source)
    return out, _report(f"head({n})", trace, out)


def _empty_like(trace: Trace) -> pa.Table:
    return trace.table.schema.empty_table()
