"""The canonical trace schema: one row per request, columns and units declared once.

A Trace wraps a pyarrow Table (columns, not millions of objects). `iter_requests()` feeds the discrete-event
simulation; vectorised code reads `trace.table` directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, starmap

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REQUIRED_FIELDS = (
    pa.field("request_id", pa.int64(), nullable=False),  # unique per request
    pa.field("arrival_s", pa.float64(), nullable=False),  # seconds from the trace start
    pa.field("input_tokens", pa.int32(), nullable=False),  # prompt length, tokens
    pa.field("output_tokens", pa.int32(), nullable=False),  # generated length, tokens
)
OPTIONAL_FIELDS = (
    pa.field("session_id", pa.int64()),  # conversation / session, when the source has one
    pa.field("prefix_blocks", pa.list_(pa.int64())),  # prefix-cache block hashes (Mooncake), for prefix what-ifs
)
REQUIRED_NAMES = tuple(f.name for f in REQUIRED_FIELDS)
_ALL_FIELDS = {f.name: f for f in REQUIRED_FIELDS + OPTIONAL_FIELDS}


class TraceFormatError(ValueError):
    """A trace file or table does not fit the schema; the message names the file, row and field."""


class TraceRowError(TraceFormatError):
    """A bad value at one data row of a trace file, counted 1-based among the data rows.

    The reader that knows the file's layout says where that row is (`files.located_rows`: a JSON Lines line, a
    CSV row after the header); until then the message reads "row N".
    """

    def __init__(self, source: str, row: int, detail: str) -> None:
        super().__init__(f"{source}: row {row}: {detail}")
        self.source, self.row, self.detail = source, row, detail


class TraceOptionError(ValueError):
    """A bad option for loading, transforming, binning or synthesizing a trace (names the option and its value)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request, as the simulator sees it.

    Attributes:
        request_id: unique id.
        arrival_s: arrival time, seconds from the trace start.
        input_tokens: prompt length.
        output_tokens: tokens to generate (>= 1).
    """

    request_id: int
    arrival_s: float
    input_tokens: int
    output_tokens: int


def trace_schema(table_schema: pa.Schema | None = None) -> pa.Schema:
    """The canonical schema: the required fields plus whichever optional fields `table_schema` carries."""
    names = set(table_schema.names) if table_schema is not None else set()
    return pa.schema(list(REQUIRED_FIELDS) + [f for f in OPTIONAL_FIELDS if f.name in names])


@dataclass(frozen=True, slots=True)
class Trace:
    """A validated request table (sorted by arrival) and where it came from.

    Attributes:
        table: columns per `trace_schema`.
        source: file path or bundled name, for error messages and reports.
        start_unix_s: the wall-clock time of `arrival_s` 0 (seconds since the Unix epoch, UTC; date-times without a
            zone offset are read as UTC), for traces whose arrivals are date-times; None for relative-time traces
            (numeric timestamps, synthesized arrivals) and after transforms.
    """

    table: pa.Table
    source: str = "<memory>"
    start_unix_s: float | None = None

    def __post_init__(self) -> None:
        validate_table(self.table, self.source)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def span_s(self) -> float:
        """Seconds from the first to the last arrival (0 for fewer than two requests)."""
        if self.table.num_rows < 2:
            return 0.0
        arrivals = self.table.column("arrival_s")
        return float(pc.max(arrivals).as_py() - pc.min(arrivals).as_py())

    def column(self, name: str) -> np.ndarray:
        """One column as a numpy array (zero-copy where Arrow allows)."""
        return self.table.column(name).to_numpy()

    def iter_requests(self) -> Iterator[Request]:
        """Requests in arrival order, built lazily batch by batch."""
        return starmap(Request, self.iter_rows(REQUIRED_NAMES))

    def iter_rows(self, names: Sequence[str] = ("arrival_s", "input_tokens", "output_tokens")) -> Iterator[tuple]:
        """Tuples of the named columns' values (Python numbers) in arrival order, read a block of rows at a time.

        The simulator's feed: no object per request, and only a block's values in Python at once; the blocks are
        chained in C (a generator delegating to each block's zip costs a Python frame resumption a row).
        """
        batches = self.table.select(list(names)).to_batches(max_chunksize=65536)
        return chain.from_iterable(zip(*(column.to_numpy().tolist() for column in batch.columns), strict=True)
                                   for batch in batches)

    @classmethod
    def from_columns(cls, arrival_s, input_tokens, output_tokens, request_id=None, source="<memory>") -> Trace:
        """Build from array-likes; ids default to 0..n-1. Rows are sorted by arrival (stable)."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        ids = np.arange(len(arrival), dtype=np.int64) if request_id is None else np.asarray(request_id, np.int64)
        table = pa.table({
            "request_id": pa.array(ids, pa.int64()),
            "arrival_s": pa.array(arrival, pa.float64()),
            "input_tokens": pa.array(np.asarray(input_tokens), pa.int32()),
            "output_tokens": pa.array(np.asarray(output_tokens), pa.int32()),
        })
        return cls(sort_by_arrival(table), source)


def sort_by_arrival(table: pa.Table) -> pa.Table:
    """Stable sort by arrival time (a no-op copy-free check when already sorted)."""
    arrivals = table.column("arrival_s").to_numpy()
    if len(arrivals) < 2 or bool(np.all(arrivals[1:] >= arrivals[:-1])):
        return table
    return table.take(pa.array(np.argsort(arrivals, kind="stable")))


def is_sorted(table: pa.Table) -> bool:
    """True when arrivals never decrease."""
    arrivals = table.column("arrival_s").to_numpy()
    return len(arrivals) < 2 or bool(np.all(arrivals[1:] >= arrivals[:-1]))


def validate_table(table: pa.Table, source: str = "<memory>") -> None:
    """Check columns, types, nulls, signs and order; raise TraceFormatError naming the row and field.

    Rows are reported 1-based as data rows (a CSV's header is not counted).
    """
    for f in REQUIRED_FIELDS:
        if f.name not in table.column_names:
            raise TraceFormatError(f"{source}: missing column {f.name!r} (have: {', '.join(table.column_names)})")
    for name in table.column_names:
        if name in _ALL_FIELDS and table.schema.field(name).type != _ALL_FIELDS[name].type:
            raise TraceFormatError(f"{source}: column {name!r} has type {table.schema.field(name).type}, "
                                   f"expected {_ALL_FIELDS[name].type}")
    for name in REQUIRED_NAMES:
        col = table.column(name)
        if col.null_count:
            row = _first_row(pc.is_null(col))
            raise TraceFormatError(f"{source}: row {row}: field {name!r} is empty")
    _check(table, "arrival_s", pc.invert(pc.is_finite(table.column("arrival_s"))), "is not a finite number", source)
    _check(table, "arrival_s", pc.less(table.column("arrival_s"), 0), "is negative", source)
    _check(table, "input_tokens", pc.less(table.column("input_tokens"), 0), "is negative", source)
    _check(table, "output_tokens", pc.less(table.column("output_tokens"), 0), "is negative", source)
    if not is_sorted(table):
        arrivals = table.column("arrival_s").to_numpy()
        row = int(np.argmax(arrivals[1:] < arrivals[:-1])) + 2
        raise TraceFormatError(f"{source}: row {row}: arrivals are not sorted (sort the trace first)")


def _check(table: pa.Table, name: str, bad: pa.ChunkedArray, what: str, source: str) -> None:
    if pc.any(bad).as_py():
        row = _first_row(bad)
        value = table.column(name)[row - 1].as_py()
        raise TraceFormatError(f"{source}: row {row}: field {name!r}={value!r} {what}")


def _first_row(mask: pa.ChunkedArray) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False))) + 1
