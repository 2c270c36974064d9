"""Trace loaders: one per public source, auto-detected by content, each returning a Trace and a LoadReport.

Sources: Azure LLM inference 2023 and 2024 CSVs, BurstGPT CSV, Mooncake JSONL, length-only CSVs (Vidur), our own
canonical Parquet/CSV, and generic CSV/Parquet/JSONL with a column mapping. `load_trace` is the one entry point the
rest of tokenjoule uses. Arrivals are re-zeroed to the first request (canonical files keep theirs); request ids are
the 0-based row numbers of the source file (kept when rows are dropped). Rows with 0 output tokens (BurstGPT's
failed requests) are dropped by default, because the simulator generates at least one token per request;
`zero_output="keep"` keeps them.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokenjoule.traces import synth
from tokenjoule.traces.checks import TraceChecks, TraceNote
from tokenjoule.traces.columns import DATETIME_UNITS, TIME_UNITS, ColumnMap, Converted, convert, has_zone_offset
from tokenjoule.traces.files import Sniffed, located_rows, read_table, sniff
from tokenjoule.traces.schema import Trace, TraceFormatError, TraceOptionError, TraceRowError

logger = logging.getLogger(__name__)

BUNDLED_TRACES = {"azure-conv-2023": "azure_conv_2023.csv", "azure-code-2023": "azure_code_2023.csv"}
FORMATS = {
    "azure-2023": ColumnMap("ContextTokens", "GeneratedTokens", "TIMESTAMP", "datetime-naive"),
    "azure-2024": ColumnMap("ContextTokens", "GeneratedTokens", "TIMESTAMP", "datetime-tz"),
    "burstgpt": ColumnMap("Request tokens", "Response tokens", "Timestamp", "s"),
    "mooncake": ColumnMap("input_length", "output_length", "timestamp", "ms", prefix_blocks="hash_ids"),
    "length-only": ColumnMap("num_prefill_tokens", "num_decode_tokens"),
    "canonical": ColumnMap("input_tokens", "output_tokens", "arrival_s", "s"),
}
FORMAT_NAMES = (*FORMATS, "generic")
_CANONICAL_OPTIONAL = ("request_id", "session_id", "prefix_blocks")


@dataclass(frozen=True, slots=True)
class LoadOptions:
    """Choices a loader makes that change the trace; every one is recorded in the LoadReport.

    Attributes:
        mapping: canonical field -> source column, for the generic format (e.g. {"arrival_s": "ts", ...}).
        time_unit: unit of a mapped arrival column: "s", "ms", "us" or "datetime".
        zero_output: "drop" (default: the simulator needs output_tokens >= 1) or "keep" rows with 0 output tokens.
        unsorted: "sort" (stable, and say so in the report) or "refuse" unsorted arrivals.
        spread_buckets_s: spread arrivals uniformly over [t, t + this) with a seeded rng (Mooncake's ~3 s buckets).
        seed: seed for spreading and for synthesized arrivals.
        arrivals: for sources without timestamps: "poisson" (rate_per_s), "gamma" (rate_per_s, cv) or "zero".
        rate_per_s: mean arrival rate for synthesized arrivals, requests per second.
        cv: inter-arrival coefficient of variation for gamma arrivals.
    """

    mapping: dict[str, str] | None = None
    time_unit: str = "s"
    zero_output: str = "drop"
    unsorted: str = "sort"
    spread_buckets_s: float | None = None
    seed: int = 0
    arrivals: str | None = None
    rate_per_s: float | None = None
    cv: float = 1.0

    def __post_init__(self) -> None:
        if self.zero_output not in ("drop", "keep"):
            raise TraceOptionError(f"--zero-output {self.zero_output!r}: must be drop or keep")
        if self.unsorted not in ("sort", "refuse"):
            raise TraceOptionError(f"--unsorted {self.unsorted!r}: must be sort or refuse")
        if self.spread_buckets_s is not None and not self.spread_buckets_s > 0:
            raise TraceOptionError(f"--spread-buckets-s {self.spread_buckets_s:g}: must be > 0")
        if not self.cv > 0:
            raise TraceOptionError(f"--cv {self.cv:g}: must be > 0")
        if self.time_unit not in TIME_UNITS:
            raise TraceOptionError(f"--time-unit {self.time_unit!r}: must be one of {', '.join(TIME_UNITS)}")
        if self.arrivals is not None:
            if self.arrivals not in synth.ARRIVAL_PROCESSES:
                raise TraceOptionError(f"--arrivals {self.arrivals!r}: must be one of "
                                       f"{', '.join(synth.ARRIVAL_PROCESSES)}")
            if self.arrivals != "zero" and not (self.rate_per_s or 0) > 0:
                got = "not given" if self.rate_per_s is None else f"got {self.rate_per_s:g}"
                raise TraceOptionError(f"--arrivals {self.arrivals} needs --rate > 0 (requests/s; {got})")
        self._refuse_unread()

    def _refuse_unread(self) -> None:
        """Refuse an option nothing would read (it would change nothing, silently), naming its flag."""
        if self.time_unit != "s" and self.mapping is None:
            raise TraceOptionError(f"--time-unit {self.time_unit}: only a mapped arrival column (--map) reads it; a "
                                   "detected format knows its own unit")
        if self.rate_per_s is not None and self.arrivals in (None, "zero"):
            raise TraceOptionError(f"--rate {self.rate_per_s:g}: only synthesized arrivals (--arrivals poisson or "
                                   "gamma) read it; it does not change a trace's own timestamps")
        if self.cv != 1.0 and self.arrivals != "gamma":
            raise TraceOptionError(f"--cv {self.cv:g}: only --arrivals gamma reads it; give --arrivals gamma or drop "
                                   "--cv")

    @property
    def whole_table(self) -> bool:
        """True when loading needs every row at once, so it cannot stream: spreading moves arrivals out of order."""
        return self.spread_buckets_s is not None


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What a loader read, dropped and changed.

    Attributes:
        source: file path or bundled name.
        fmt: format name (see FORMAT_NAMES).
        rows_read: data rows in the source.
        rows_kept: rows in the returned trace.
        dropped: (reason, count) pairs.
        was_sorted: whether the source's arrivals were already in order.
        sorted_by_loader: whether the loader sorted the rows (unsorted source, or after spreading).
        spread_buckets_s: the spreading width used, if any.
        arrivals: "source column <name>" or how arrivals were synthesized.
        seed: the seed used when randomness was involved, else None.
        notes: out-of-order arrivals (and that they were sorted) and repeated request ids, with counts.
    """

    source: str
    fmt: str
    rows_read: int
    rows_kept: int
    dropped: tuple[tuple[str, int], ...] = ()
    was_sorted: bool = True
    sorted_by_loader: bool = False
    spread_buckets_s: float | None = None
    arrivals: str = ""
    seed: int | None = None
    notes: tuple[TraceNote, ...] = field(default=())

    @property
    def rows_dropped(self) -> int:
        """Total rows dropped, all reasons."""
        return sum(count for _, count in self.dropped)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        parts = [f"{self.source}: {self.fmt}, {self.rows_read} rows read, {self.rows_kept} kept"]
        parts += [f"dropped {count} ({reason})" for reason, count in self.dropped]
        if self.sorted_by_loader:
            parts.append("sorted by arrival" + ("" if self.was_sorted else " (source was unsorted)"))
        if self.spread_buckets_s:
            parts.append(f"arrivals spread over {self.spread_buckets_s} s buckets (seed {self.seed})")
        parts.append(f"arrivals: {self.arrivals}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """A resolved source: the file, its format and the columns to read (shared by loading and streaming)."""

    sniffed: Sniffed
    source: str
    fmt: str
    cmap: ColumnMap


def bundled_path(name: str) -> Path:
    """The file behind a bundled trace name (e.g. "azure-conv-2023")."""
    return Path(__file__).parent / "data" / BUNDLED_TRACES[name]


def plan_load(path_or_name: str | Path, fmt: str | None = None, options: LoadOptions | None = None) -> LoadPlan:
    """Resolve a path or bundled name, detect or check its format, and check the needed columns exist.

    Args:
        path_or_name: a file path or a name in BUNDLED_TRACES.
        fmt: a name in FORMAT_NAMES, or None to detect from the content.
        options: load options (the mapping and time unit matter here).

    Returns:
        The plan.

    Raises:
        TraceFormatError: a directory, an unknown or undetectable format, or missing columns.
        FileNotFoundError: neither a file nor a bundled name.
    """
    options = options or LoadOptions()
    name = str(path_or_name)
    path = Path(path_or_name)
    bundled = ", ".join(BUNDLED_TRACES)
    if name in BUNDLED_TRACES and not path.exists():
        path = bundled_path(name)
    elif path.is_dir():
        raise TraceFormatError(f"{name}: is a directory; give one trace file (CSV or JSON Lines, plain or .gz, .bz2, "
                               f".zst; or Parquet) or a bundled trace name ({bundled})")
    elif not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no such file or bundled trace (bundled: {bundled})", name)
    sniffed = sniff(path)
    fmt = fmt or ("generic" if options.mapping else detect_format(sniffed))
    cmap = _column_map(sniffed, fmt, options)
    missing = [c for c in cmap.source_columns if c not in sniffed.columns]
    if missing:
        raise TraceFormatError(f"{name}: missing column {missing[0]!r} for format {fmt!r} "
                               f"(have: {', '.join(sniffed.columns)})")
    return LoadPlan(sniffed, name, fmt, cmap)


def detect_format(sniffed: Sniffed) -> str:
    """Name the format from the header columns (CSV, Parquet) or the first object's keys (JSONL).

    Raises:
        TraceFormatError: nothing matches; the message lists the columns and the way out.
    """
    cols = set(sniffed.columns)
    if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
        first = dict(zip(sniffed.columns, sniffed.first_row, strict=False)).get("TIMESTAMP", "")
        return "azure-2024" if has_zone_offset(first) else "azure-2023"
    for fmt in ("burstgpt", "mooncake", "canonical", "length-only"):
        if set(FORMATS[fmt].source_columns) <= cols:
            return fmt
    raise TraceFormatError(f"{sniffed.path}: unknown trace format (columns: {', '.join(sniffed.columns)}); "
                           f"pass --format ({', '.join(FORMAT_NAMES)}) or a column mapping (--map)")


def _column_map(sniffed: Sniffed, fmt: str, options: LoadOptions) -> ColumnMap:
    if fmt == "generic":
        if not options.mapping:
            raise TraceFormatError(f"{sniffed.path}: --format generic needs a column mapping, "
                                   "e.g. --map arrival_s=ts,input_tokens=in,output_tokens=out")
        return ColumnMap.from_mapping(options.mapping, options.time_unit)
    if fmt not in FORMATS:
        raise TraceFormatError(f"{sniffed.path}: --format {fmt!r}: unknown (known: {', '.join(FORMAT_NAMES)})")
    cmap = FORMATS[fmt]
    if fmt == "canonical":  # carry the optional canonical columns when the file has them
        extra = {k: k for k in _CANONICAL_OPTIONAL if k in sniffed.columns}
        cmap = ColumnMap.from_mapping({"arrival_s": "arrival_s", "input_tokens": "input_tokens",
                                       "output_tokens": "output_tokens", **extra}, rezero=False)
    return cmap


def read_trace(path_or_name: str | Path, fmt: str | None = None, *, options: LoadOptions | None = None,
               **kwargs) -> tuple[Trace, LoadReport]:
    """Load a trace and say what loading did.

    Args:
        path_or_name: a file or a bundled name ("azure-conv-2023", "azure-code-2023").
        fmt: format name (FORMAT_NAMES) or None to detect it from the content.
        options: a LoadOptions; or give its fields as keywords instead.
        **kwargs: fields of LoadOptions (mapping, time_unit, zero_output, unsorted, spread_buckets_s, seed,
            arrivals, rate_per_s, cv).

    Returns:
        (trace, report).
    """
    if options is not None and kwargs:
        raise ValueError("pass either options= or load-option keywords, not both")
    opts = options if options is not None else _options(kwargs)
    return read_planned(plan_load(path_or_name, fmt, opts), opts)


def read_planned(plan: LoadPlan, opts: LoadOptions) -> tuple[Trace, LoadReport]:
    """Load a resolved source whole (`read_trace` for a plan already made); rows are named in the file's terms."""
    with located_rows(plan.sniffed):
        table = read_table(plan.sniffed, plan.cmap.source_columns)
        trace, report = assemble(convert(table, plan.cmap, plan.source), table.num_rows, plan, opts)
    logger.info("%s", report.summary())
    return trace, report


def load_trace(path_or_name: str | Path, fmt: str | None = None, **options) -> Trace:
    """Load a trace (file or bundled name) in the canonical schema; see `read_trace` for the arguments."""
    return read_trace(path_or_name, fmt, **options)[0]


def load_azure_2023(path: str | Path, **options) -> tuple[Trace, LoadReport]:
    """Azure LLM inference 2023 CSV (TIMESTAMP naive, 7 fractional digits; ContextTokens; GeneratedTokens)."""
    return read_trace(path, "azure-2023", **options)


def load_azure_2024(path: str | Path, **options) -> tuple[Trace, LoadReport]:
    """Azure LLM inference 2024 CSV (same columns; ISO timestamps with +00:00 offset, mixed precision)."""
    return read_trace(path, "azure-2024", **options)


def load_burstgpt(path: str | Path, **options) -> tuple[Trace, LoadReport]:
    """BurstGPT CSV (Timestamp in s, Request tokens, Response tokens; 0 response tokens = failed request)."""
    return read_trace(path, "burstgpt", **options)


def load_mooncake(path: str | Path, **options) -> tuple[Trace, LoadReport]:
    """Mooncake JSONL (timestamp in ms, input_length, output_length, hash_ids -> prefix_blocks)."""
    return read_trace(path, "mooncake", **options)


def load_length_only(path: str | Path, **options) -> tuple[Trace, LoadReport]:
    """Length-only CSV (Vidur: num_prefill_tokens, num_decode_tokens); needs `arrivals=` to synthesize times."""
    return read_trace(path, "length-only", **options)


def load_generic(path: str | Path, mapping: dict[str, str], time_unit: str = "s",
                 **options) -> tuple[Trace, LoadReport]:
    """Any CSV/Parquet/JSONL with a column mapping, e.g. {"arrival_s": "ts", "input_tokens": "in", ...}."""
    return read_trace(path, "generic", mapping=mapping, time_unit=time_unit, **options)


def _options(options: dict) -> LoadOptions:
    try:
        return LoadOptions(**options)
    except TypeError as err:
        raise ValueError(f"unknown load option: {err}") from err


def assemble(conv: Converted, rows_read: int, plan: LoadPlan, opts: LoadOptions) -> tuple[Trace, LoadReport]:
    """Turn converted columns into a Trace: synthesize or spread arrivals, drop, re-zero, sort or refuse.

    Args:
        conv: the converted source columns (all rows).
        rows_read: data rows read.
        plan: the resolved source.
        opts: load options.

    Returns:
        (trace, report).
    """
    rng = np.random.default_rng(opts.seed)
    how = arrival_source(plan, opts)
    arrival = conv.arrival_s if conv.arrival_s is not None else synth.arrivals(
        rows_read, opts.arrivals, rng, opts.rate_per_s or 1.0, opts.cv)
    keep = np.ones(rows_read, bool)
    dropped: list[tuple[str, int]] = []
    if opts.zero_output == "drop" and bool(np.any(conv.output_tokens == 0)):
        keep = conv.output_tokens != 0
        dropped.append(("output_tokens == 0, e.g. failed requests", int(rows_read - keep.sum())))
        if not keep.any():
            raise TraceFormatError(f"{plan.source}: every row has 0 output tokens; "
                                   "pass --zero-output keep to keep them")
    rows = np.flatnonzero(keep)
    arrival = arrival[rows]
    checks = TraceChecks()
    first_late = checks.add(arrival, conv.request_id[rows] if conv.request_id is not None else None)
    was_sorted = first_late is None
    if first_late is not None and opts.unsorted == "refuse":
        raise unsorted_error(plan, int(rows[first_late]) + 1)
    if opts.spread_buckets_s:
        arrival = arrival + rng.uniform(0.0, opts.spread_buckets_s, size=len(arrival))
    start_unix_s = None
    if plan.cmap.time_unit in DATETIME_UNITS and conv.arrival_s is not None and len(arrival):
        start_unix_s = conv.ref * 1e-9 + float(arrival.min()) if plan.cmap.rezero else None
    if plan.cmap.rezero:
        arrival = arrival - arrival.min()
    resort = not bool(np.all(arrival[1:] >= arrival[:-1]))
    order = rows[np.argsort(arrival, kind="stable")] if resort else rows
    if resort:
        arrival = np.sort(arrival, kind="stable")
    trace = Trace(_table(conv, order, arrival), plan.source, start_unix_s)
    random = opts.spread_buckets_s is not None or plan.cmap.arrival_s is None
    report = LoadReport(plan.source, plan.fmt, rows_read, len(order), tuple(dropped), was_sorted, resort,
                        opts.spread_buckets_s, how, opts.seed if random else None, checks.notes())
    return trace, report


def arrival_source(plan: LoadPlan, opts: LoadOptions) -> str:
    """Where arrivals come from, in words; refuses `--arrivals` on a trace with timestamps, and a trace without both.

    Raises:
        TraceOptionError: `--arrivals` given for a trace that has timestamps.
        TraceFormatError: a trace without timestamps and no `--arrivals`.
    """
    if plan.cmap.arrival_s is not None:
        if opts.arrivals is not None:
            raise TraceOptionError(f"{plan.source}: --arrivals applies only to traces without timestamps (this "
                                   f"one has {plan.cmap.arrival_s!r}); drop --arrivals")
        return f"source column {plan.cmap.arrival_s!r} ({plan.cmap.time_unit})"
    if opts.arrivals is None:
        raise TraceFormatError(f"{plan.source}: format {plan.fmt!r} has no arrival times; choose how to "
                               "synthesize them: --arrivals poisson --rate R, --arrivals gamma --rate R --cv C, or "
                               "--arrivals zero")
    rate = "" if opts.arrivals == "zero" else f" at {opts.rate_per_s}/s"
    cv = f", cv {opts.cv}" if opts.arrivals == "gamma" else ""
    return f"synthesized {opts.arrivals}{rate}{cv} (seed {opts.seed})"


def unsorted_error(plan: LoadPlan, row: int) -> TraceRowError:
    """The error for `--unsorted refuse`: data row `row` (1-based) arrives earlier than the row before it."""
    return TraceRowError(plan.source, row, f"field {plan.cmap.arrival_s!r} is earlier than the row before (arrivals "
                         "are not sorted; --unsorted sort sorts them)")


def _table(conv: Converted, order: np.ndarray, arrival: np.ndarray) -> pa.Table:
    ids = conv.request_id[order] if conv.request_id is not None else order.astype(np.int64)
    columns = {
        "request_id": pa.array(ids, pa.int64()),
        "arrival_s": pa.array(arrival, pa.float64()),
        "input_tokens": pa.array(conv.input_tokens[order].astype(np.int32), pa.int32()),
        "output_tokens": pa.array(conv.output_tokens[order].astype(np.int32), pa.int32()),
    }
    if conv.session_id is not None:
        columns["session_id"] = pa.array(conv.session_id[order], pa.int64())
    if conv.prefix_blocks is not None:
        columns["prefix_blocks"] = conv.prefix_blocks.take(pa.array(order))
    return pa.table(columns)
