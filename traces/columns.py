"""Raw source columns to canonical arrays: typed casts, timestamps to seconds, errors that name row and field.

Every conversion is a pyarrow compute call on a whole column. When a cast fails, the first bad row is found by
bisecting the column (a logarithmic number of casts, no loop over rows), so the error can name it.
Rows are numbered 1-based as data rows (a CSV header is not counted), offset by `row0` for streamed batches; errors
about one row are `TraceRowError`s, which the reader turns into the file's own terms (`files.located_rows`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tokenjoule.traces.schema import TraceFormatError, TraceOptionError, TraceRowError

NUMERIC_UNITS_S = {"s": 1.0, "ms": 1e-3, "us": 1e-6}  # seconds per unit of a numeric arrival column
DATETIME_UNITS = ("datetime", "datetime-naive", "datetime-tz")  # any / no zone offset / with zone offset
TIME_UNITS = tuple(NUMERIC_UNITS_S) + DATETIME_UNITS
CANONICAL_KEYS = ("arrival_s", "input_tokens", "output_tokens", "request_id", "session_id", "prefix_blocks")
_INT32_MAX = 2**31 - 1
_OFFSET_RE = r"(Z|[+-]\d\d:?\d\d)$"  # an ISO 8601 zone offset ending a date-time


@dataclass(frozen=True, slots=True)
class ColumnMap:
    """Which source column feeds each canonical field, and the unit of the arrival column.

    Attributes:
        input_tokens: source column of prompt lengths.
        output_tokens: source column of generated lengths.
        arrival_s: source column of arrival times, or None when the source has none (arrivals are then synthesized).
        time_unit: unit of the arrival column: "s", "ms", "us" (numbers) or "datetime" (ISO date-times, with or
            without a zone offset; "datetime-naive" / "datetime-tz" insist on one or the other).
        request_id: optional source column of integer request ids.
        session_id: optional source column of integer session ids.
        prefix_blocks: optional source column of lists of prefix-block hashes.
        rezero: measure arrivals from the first one (True), or keep them as given (False: already seconds from
            the trace start, as in our own canonical files).
    """

    input_tokens: str
    output_tokens: str
    arrival_s: str | None = None
    time_unit: str = "s"
    request_id: str | None = None
    session_id: str | None = None
    prefix_blocks: str | None = None
    rezero: bool = True

    def __post_init__(self) -> None:
        if self.time_unit not in TIME_UNITS:
            raise TraceOptionError(f"--time-unit {self.time_unit!r}: must be one of {', '.join(TIME_UNITS)}")

    @classmethod
    def from_mapping(cls, mapping: dict[str, str], time_unit: str = "s", rezero: bool = True) -> ColumnMap:
        """Build from `{"arrival_s": "ts", "input_tokens": "in", "output_tokens": "out", ...}`.

        Args:
            mapping: canonical field name -> source column name.
            time_unit: unit of the arrival column (see the class docstring).
            rezero: see the class docstring.

        Returns:
            The column map.

        Raises:
            ValueError: an unknown canonical name, or input/output tokens missing.
        """
        unknown = sorted(set(mapping) - set(CANONICAL_KEYS))
        if unknown:
            raise TraceOptionError(f"--map: unknown field(s) {', '.join(unknown)} "
                                   f"(known: {', '.join(CANONICAL_KEYS)})")
        for key in ("input_tokens", "output_tokens"):
            if key not in mapping:
                raise TraceOptionError(f"--map: {key!r} is required (e.g. {key}=<source column>)")
        return cls(time_unit=time_unit, rezero=rezero, **mapping)

    @property
    def source_columns(self) -> tuple[str, ...]:
        """The source columns this map reads, in a fixed order, without duplicates."""
        names = (self.arrival_s, self.input_tokens, self.output_tokens, self.request_id, self.session_id,
                 self.prefix_blocks)
        return tuple(dict.fromkeys(n for n in names if n is not None))


@dataclass(frozen=True, slots=True)
class Converted:
    """Canonical arrays for a block of rows, before sorting or dropping.

    Attributes:
        input_tokens: int64 prompt lengths (checked non-negative and int32-sized).
        output_tokens: int64 generated lengths.
        arrival_s: float64 arrival times in seconds relative to `ref`, or None when the source has none.
        ref: the reference the arrivals are relative to (first arrival of the first block), in source units.
        request_id: int64 ids or None.
        session_id: int64 ids or None.
        prefix_blocks: list<int64> array or None.
    """

    input_tokens: np.ndarray
    output_tokens: np.ndarray
    arrival_s: np.ndarray | None = None
    ref: float | int | None = None
    request_id: np.ndarray | None = None
    session_id: np.ndarray | None = None
    prefix_blocks: pa.Array | None = field(default=None)


def convert(table: pa.Table, cmap: ColumnMap, source: str, row0: int = 0, ref: float | int | None = None) -> Converted:
    """Convert the mapped source columns of `table` to canonical arrays.

    Args:
        table: the raw rows (string columns from CSV, typed columns from Parquet/JSONL).
        cmap: which column feeds which field.
        source: file name for error messages.
        row0: number of data rows before this block (for error row numbers).
        ref: arrival reference from an earlier block (None: use this block's first arrival).

    Returns:
        The converted arrays.

    Raises:
        TraceFormatError: a value that is empty, non-numeric, negative, too large or not a date-time.
    """
    def col(name: str) -> pa.Array:
        return _flat(table.column(name))

    inp = token_array(col(cmap.input_tokens), source, cmap.input_tokens, row0)
    out = token_array(col(cmap.output_tokens), source, cmap.output_tokens, row0)
    arrival = None
    if cmap.arrival_s is not None:
        ref = ref if ref is not None or cmap.rezero else 0
        arrival, ref = arrival_seconds(col(cmap.arrival_s), cmap.time_unit, source, cmap.arrival_s, row0, ref)
    rid = _int_ids(col(cmap.request_id), source, cmap.request_id, row0) if cmap.request_id else None
    sid = _int_ids(col(cmap.session_id), source, cmap.session_id, row0) if cmap.session_id else None
    prefix = None
    if cmap.prefix_blocks:
        prefix = _cast(col(cmap.prefix_blocks), pa.list_(pa.int64()), source, cmap.prefix_blocks, row0,
                       "is not a list of integers")
    return Converted(inp, out, arrival, ref, rid, sid, prefix)


def token_array(column: pa.Array, source: str, name: str, row0: int = 0) -> np.ndarray:
    """A token-count column as int64, checked: no empties, whole numbers, non-negative, fits int32.

    Args:
        column: the raw column.
        source: file name for error messages.
        name: source column name for error messages.
        row0: data rows before this block.

    Returns:
        int64 numpy array.

    Raises:
        TraceFormatError: naming the first bad row and its value.
    """
    column = _nonempty(column, source, name, row0)
    values = _cast(column, pa.int64(), source, name, row0, "is not a whole number of tokens").to_numpy()
    _refuse(values < 0, values, source, name, row0, "is negative (token counts must be >= 0)")
    _refuse(values > _INT32_MAX, values, source, name, row0, f"is larger than {_INT32_MAX}")
    return values


def arrival_seconds(column: pa.Array, unit: str, source: str, name: str, row0: int = 0,
                    ref: float | int | None = None) -> tuple[np.ndarray, float | int]:
    """Arrival times as float64 seconds relative to `ref` (default: this column's first value).

    Args:
        column: the raw column (numbers, numeric strings, date-time strings or Arrow timestamps).
        unit: one of TIME_UNITS.
        source: file name for error messages.
        name: source column name for error messages.
        row0: data rows before this block.
        ref: reference in source units (ns since the epoch for date-times).

    Returns:
        (seconds relative to the reference, the reference used).

    Raises:
        TraceFormatError: an empty, non-numeric, non-finite or unparsable value, naming its row.
    """
    column = _nonempty(column, source, name, row0)
    if unit in NUMERIC_UNITS_S:
        if pa.types.is_timestamp(column.type):
            raise TraceFormatError(f"{source}: field {name!r} holds date-times; pass --time-unit datetime")
        values = _cast(column, pa.float64(), source, name, row0, f"is not a number (time unit {unit!r})").to_numpy()
        _refuse(~np.isfinite(values), values, source, name, row0, "is not a finite number")
        ref = values[0] if ref is None else ref
        return (values - ref) * NUMERIC_UNITS_S[unit], ref
    ns = _timestamps_ns(column, unit, source, name, row0)
    ref = int(ns[0]) if ref is None else ref
    return (ns - ref).astype(np.float64) * 1e-9, ref


def has_zone_offset(text: str) -> bool:
    """Whether an ISO date-time string ends in a zone offset ("Z", "+00:00", "-0500")."""
    return re.search(_OFFSET_RE, text.strip()) is not None


def _timestamps_ns(column: pa.Array, unit: str, source: str, name: str, row0: int) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("ns", column.type.tz)), pa.int64()).to_numpy()
    if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
        raise TraceFormatError(f"{source}: field {name!r} has type {column.type}, expected date-time strings")
    has_tz = pc.match_substring_regex(column, _OFFSET_RE).to_numpy(zero_copy_only=False)
    if unit == "datetime-naive":
        _refuse(has_tz, column, source, name, row0, "has a zone offset (this looks like an Azure 2024 trace)")
    elif unit == "datetime-tz":
        _refuse(~has_tz, column, source, name, row0, "has no zone offset (this looks like an Azure 2023 trace)")
    else:
        _refuse(has_tz != has_tz[0], column, source, name, row0, "mixes date-times with and without a zone offset")
    ts_type = pa.timestamp("ns", "UTC") if has_tz[0] else pa.timestamp("ns")
    parsed = _cast(column, ts_type, source, name, row0, "is not a date-time (expected YYYY-MM-DD HH:MM:SS[.f][+HH:MM])")
    return pc.cast(parsed, pa.int64()).to_numpy()


def _int_ids(column: pa.Array, source: str, name: str, row0: int) -> np.ndarray:
    column = _nonempty(column, source, name, row0)
    return _cast(column, pa.int64(), source, name, row0, "is not an integer id").to_numpy()


def _flat(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = pc.utf8_trim_whitespace(array)
    return array


def _nonempty(column: pa.Array, source: str, name: str, row0: int) -> pa.Array:
    empty = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
    if empty is None and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        empty = pc.equal(column, "").to_numpy(zero_copy_only=False)
    if empty is not None and bool(empty.any()):
        raise TraceRowError(source, row0 + int(np.argmax(empty)) + 1, f"field {name!r} is empty")
    return column


def _cast(column: pa.Array, to: pa.DataType, source: str, name: str, row0: int, what: str) -> pa.Array:
    try:
        return pc.cast(column, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
        row = _first_failing(column, to)
        value = column[row].as_py() if row < len(column) else None
        raise TraceRowError(source, row0 + row + 1, f"field {name!r}={value!r} {what}") from err


def _first_failing(column: pa.Array, to: pa.DataType) -> int:
    """Bisect for the first row whose cast fails (log2(n) casts; the failure is known to lie in [lo, hi))."""
    lo, hi = 0, len(column)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(column.slice(lo, mid - lo), to)
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            hi = mid
    return lo


def _refuse(bad: np.ndarray, values: np.ndarray | pa.Array, source: str, name: str, row0: int, what: str) -> None:
    if bool(np.any(bad)):
        row = int(np.argmax(bad))
        value = values[row].as_py() if isinstance(values, pa.Array) else values[row].item()
        raise TraceRowError(source, row0 + row + 1, f"field {name!r}={value!r} {what}")
