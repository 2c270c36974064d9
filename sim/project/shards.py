"""A projection in shards: a Parquet trace's row groups and the window simulations run as parallel tasks.

The estimates are those of one streamed pass (`projection.project`), to float round-off.

Covers:
- Shards (`plan_shards`): runs of consecutive row groups, a few per worker. One task per shard (`scan_shard`) reads
  its rows as the streamed pass does (`batches.kept_rows`, arrivals relative to the file's first row) into the
  estimators' sums (`StreamSums`: bin counts, FLOPs, per-window terms), and records what the window walk needs to
  find rows later: each row group's kept rows and arrival span, and the rows before every window edge and pad edge
  (`EdgeCounts`).
- Merging: the shards' sums add up in trace order, counts exactly and float sums to round-off; their arrivals must
  run in order across shards, as the streamed pass requires.
- The window walk runs here, over the merged sums (`LoadAwareProjector` reading `ShardedRows` instead of the
  stream's buffer: the same decisions on the same rows). Its simulations run as tasks, in rounds: a fork of the
  walk runs ahead and plans every simulation the windows left need if no pad grows; they run at once; the walk
  goes on with their results until a pad grows (the simulations after that were planned with the old pad, so the
  next round plans again). When a pad grows, the shards count the rows before the new pad edges.
- Anything else (CSV or JSONL, arrivals made up at load time, arrivals out of order) is projected in one streamed
  pass, as before.

Scenario:
    A week of traffic, 10^9 requests in Parquet with 1M-row row groups, projected on a Ray cluster whose nodes all
    see the file: each task reads its shard, the driver holds only per-window sums and row-group spans, and the few
    hundred window simulations run as tasks.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.calibrate.profile import GPUProfile
from tokenjoule.sim.cost import CostModel
from tokenjoule.sim.parallel import Outcome
from tokenjoule.sim.project.load_aware import (
    LoadAwareProjector,
    Operating,
    SampleRows,
    SeatModel,
    WindowSums,
    operating_point,
)
from tokenjoule.sim.project.projection import Pricing, ProjectConfig, Projection, StreamSums, project, projection_of
from tokenjoule.sim.project.stream import Batch, StreamInfo, goes_back
from tokenjoule.sim.run import SimConfig
from tokenjoule.traces.batches import RowBatch, kept_rows
from tokenjoule.traces.columns import Converted, convert
from tokenjoule.traces.files import located_rows
from tokenjoule.traces.loaders import LoadOptions, LoadPlan, plan_load
from tokenjoule.traces.schema import Trace, TraceFormatError

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
SHARDS_PER_WORKER = 4  # shards per task slot: uneven shards (a busy afternoon, a quiet night) still even out
_KEEP_GROUPS = 4  # row groups a reader keeps decoded (the walk reads forward, so a few suffice)
_MOST_AHEAD = 16  # simulations planned ahead per worker, at most


@dataclass(frozen=True, slots=True)
class TraceFile:
    """A Parquet trace as every task reads it: the same columns, conversion and drops as the streamed pass.

    Attributes:
        plan: the resolved file and column mapping.
        zero_output: "drop" or "keep" rows with 0 output tokens (`LoadOptions.zero_output`).
        ref: the arrival reference (the file's first row), so every shard's arrivals share the stream's zero.
        batch_rows: rows per record batch.
    """

    plan: LoadPlan
    zero_output: str
    ref: Any
    batch_rows: int

    def blocks(self, group: int, row0: int) -> Iterator[tuple[Converted, Batch, int]]:
        """Row group `group` (whose first row is the file's row `row0`), as (converted block, kept rows, dropped)."""
        parquet = pq.ParquetFile(str(self.plan.sniffed.path), pre_buffer=False)
        columns = list(self.plan.cmap.source_columns)
        try:
            for batch in parquet.iter_batches(batch_size=self.batch_rows, row_groups=[group], columns=columns):
                with located_rows(self.plan.sniffed):  # a bad value names its row as the one-pass reader does
                    conv = convert(pa.Table.from_batches([batch]), self.plan.cmap, self.plan.source, row0, self.ref)
                row0 += batch.num_rows
                kept, _ = kept_rows(RowBatch(conv.arrival_s, conv.input_tokens, conv.output_tokens, None),
                                    self.zero_output)
                dropped = batch.num_rows - len(kept.arrival_s)
                yield conv, (kept.arrival_s, kept.input_tokens, kept.output_tokens), dropped
        except pa.ArrowInvalid as err:
            raise TraceFormatError(f"{self.plan.source}: {str(err).strip().splitlines()[0]}") from err


@dataclass(frozen=True, slots=True)
class Shard:
    """A run of consecutive row groups, read by one task.

    Attributes:
        index: the shard's place in the file.
        groups: its row groups.
        row0: the file's row index of its first row (for error messages).
        rows: rows in it.
    """

    index: int
    groups: tuple[int, ...]
    row0: int
    rows: int


def plan_shards(path: str | Path, shards: int) -> list[Shard]:
    """Split a Parquet file's row groups into at most `shards` runs of about equal rows (empty groups left out)."""
    meta = pq.ParquetFile(str(path)).metadata
    sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(sizes.sum())
    # a group goes to the shard where its first row falls when the rows are cut into `shards` equal parts
    owner = np.minimum(starts * max(shards, 1) // max(total, 1), max(shards, 1) - 1)
    out = []
    for s in np.unique(owner[sizes > 0]):
        groups = np.flatnonzero((owner == s) & (sizes > 0))
        out.append(Shard(len(out), tuple(int(g) for g in groups), int(starts[groups[0]]), int(sizes[groups].sum())))
    return out


class EdgeCounts:
    """Rows arriving before each time j x window_s + offset (j = 0, 1, ...): the counts a window walk asks for.

    Kept for j in [first, first + width); before that no row arrives earlier, after it every row does. Counts of
    separate stretches of a trace add up (`merge`). The times are computed as the walk computes them, so a lookup
    finds the walk's time exactly or not at all.

    Args:
        window_s: window length (s).
        offsets: offsets from the window edges (s), e.g. (-pad, 0, +pad).
    """

    def __init__(self, window_s: float, offsets: Sequence[float]) -> None:
        self.window_s, self.offsets = window_s, tuple(float(o) for o in offsets)
        self.first, self.total = 0, 0
        self.counts = np.zeros((len(self.offsets), 0), np.int64)

    def add(self, arrival_s: np.ndarray) -> None:
        """Count a batch of sorted arrivals."""
        if not len(arrival_s):
            return
        w, lo_off, hi_off = self.window_s, min(self.offsets), max(self.offsets)
        # a margin of one window each side makes the searchsorted below exact whatever floor() rounds to
        j0 = max(0, math.floor((float(arrival_s[0]) - hi_off) / w) - 1)
        j1 = max(j0, math.floor((float(arrival_s[-1]) - lo_off) / w) + 2)
        j = np.arange(j0, j1)
        local = np.stack([np.searchsorted(arrival_s, j * w + c, side="left") for c in self.offsets])
        self._plus(j0, local.reshape(len(self.offsets), -1), len(arrival_s))

    def merge(self, other: EdgeCounts) -> None:
        """Add the counts of another stretch of the same trace (same window and offsets)."""
        self._plus(other.first, other.counts, other.total)

    def lookup(self, time_s: float) -> int | None:
        """Rows arriving before `time_s` when it is one of the counted times, else None."""
        for c, offset in enumerate(self.offsets):
            j = round((time_s - offset) / self.window_s)
            if j >= 0 and j * self.window_s + offset == time_s:
                if j < self.first:
                    return 0
                return int(self.counts[c, j - self.first]) if j < self.first + self.counts.shape[1] else self.total
        return None

    def _plus(self, first: int, counts: np.ndarray, total: int) -> None:
        lo = min(self.first, first) if self.counts.shape[1] else first
        hi = max(self.first + self.counts.shape[1], first + counts.shape[1])
        out = np.zeros((len(self.offsets), hi - lo), np.int64)
        for f, c, t in ((self.first, self.counts, self.total), (first, counts, total)):
            out[:, f - lo:f - lo + c.shape[1]] += c
            out[:, f - lo + c.shape[1]:] += t  # past its range every row of that stretch arrived earlier
        self.first, self.counts, self.total = lo, out, self.total + total


@dataclass(frozen=True, slots=True)
class GroupSpan:
    """One row group's kept rows and their arrivals.

    Attributes:
        group: the row group.
        row0: the file's row index of its first row.
        rows: its rows kept (after drops).
        first_s: its first kept arrival (s; nan when none is kept).
        last_s: its last kept arrival (s; nan when none is kept).
    """

    group: int
    row0: int
    rows: int
    first_s: float
    last_s: float


@dataclass(frozen=True, slots=True)
class ShardScan:
    """What reading one shard gave.

    Attributes:
        sums: the estimators' sums over its rows.
        edges: rows before each window and pad edge (None without the load-aware estimate).
        spans: its row groups.
        rows_read: rows in it.
        rows_dropped: rows dropped (0 output tokens).
        first_s: its first arrival, dropped rows included (nan when empty).
        last_s: its last arrival, dropped rows included (nan when empty).
        in_order: False when its arrivals went back in time.
    """

    sums: StreamSums | None
    edges: EdgeCounts | None
    spans: tuple[GroupSpan, ...]
    rows_read: int
    rows_dropped: int
    first_s: float
    last_s: float
    in_order: bool


@dataclass(frozen=True, slots=True)
class ScanTask:
    """What every shard task reads with: the file, which edges to count, and how to add up the rows.

    Attributes:
        file: the trace file.
        window_s: window length (s).
        edge_offsets: offsets of the edges to count (empty: none).
        config: the projection's configuration (None: count edges only).
        pricing: its pricing (with `config`).
        window_terms: an empty `WindowSums` to copy (None without the load-aware estimate).
    """

    file: TraceFile
    window_s: float
    edge_offsets: tuple[float, ...]
    config: ProjectConfig | None = None
    pricing: Pricing | None = None
    window_terms: WindowSums | None = None


def scan_shard(task: ScanTask, shard: Shard) -> ShardScan:
    """Read one shard into sums, edge counts and row-group spans (a task: see `sim.parallel`)."""
    sums = None
    if task.config is not None and task.pricing is not None:
        terms = task.window_terms
        load = WindowSums(terms.seats, terms.sim, terms.kv_capacity_tokens, terms.window_s) if terms else None
        sums = StreamSums(task.config, task.pricing.theory_sums(task.config), load)
    edges = EdgeCounts(task.window_s, task.edge_offsets) if task.edge_offsets else None
    spans, read, dropped, first, last = [], 0, 0, math.nan, -math.inf
    for group in shard.groups:
        g_row0, kept, g_first, g_last = shard.row0 + read, 0, math.nan, math.nan
        for conv, (arrival, inp, out), n_dropped in task.file.blocks(group, g_row0):
            if goes_back(conv.arrival_s, last):
                return ShardScan(None, None, (), read, dropped, first, last, False)
            if len(conv.arrival_s):
                first = float(conv.arrival_s[0]) if math.isnan(first) else first
                last = float(conv.arrival_s[-1])
            read += len(conv.arrival_s)
            dropped += n_dropped
            if len(arrival):
                g_first = float(arrival[0]) if math.isnan(g_first) else g_first
                g_last, kept = float(arrival[-1]), kept + len(arrival)
            if sums is not None:
                sums.add(arrival, inp, out)
            if edges is not None:
                edges.add(arrival)
        spans.append(GroupSpan(group, g_row0, kept, g_first, g_last))
    return ShardScan(sums, edges, tuple(spans), read, dropped, first, last if read else math.nan, True)


class RowGroupReader:
    """The kept rows of a Parquet trace by index, read a row group at a time (the last few kept decoded).

    Args:
        file: the trace file.
        spans: its row groups in file order.
    """

    def __init__(self, file: TraceFile, spans: Sequence[GroupSpan]) -> None:
        self.file = file
        self.spans = tuple(s for s in spans if s.rows)
        sizes = np.array([s.rows for s in self.spans], np.int64)
        self.ends = np.cumsum(sizes)  # one past each group's last row
        self.starts = self.ends - sizes
        self.lasts = np.array([s.last_s for s in self.spans])
        self._decoded: dict[int, Batch] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_decoded"] = {}  # a task reads what it needs itself
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def rows(self) -> int:
        """Kept rows in the file."""
        return int(self.ends[-1]) if len(self.ends) else 0

    def count_before(self, time_s: float) -> int:
        """Rows arriving before `time_s` (reads the one row group that holds that time, if any)."""
        i = int(np.searchsorted(self.lasts, time_s, side="left"))  # first group whose last arrival is >= time_s
        if i == len(self.spans):
            return self.rows
        if self.spans[i].first_s >= time_s:
            return int(self.starts[i])
        return int(self.starts[i]) + int(np.searchsorted(self._group(i)[0], time_s, side="left"))

    def take(self, start: int, stop: int) -> Batch:
        """Rows [start, stop) as (arrival_s, input_tokens, output_tokens)."""
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.starts, stop, side="left"))
        parts = []
        for i in range(first, last):
            cols = self._group(i)
            cut = slice(max(start - int(self.starts[i]), 0), min(stop, int(self.ends[i])) - int(self.starts[i]))
            parts.append(tuple(c[cut] for c in cols))
        if not parts:
            return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        return tuple(np.concatenate(cols) for cols in zip(*parts, strict=True))  # type: ignore[return-value]

    def _group(self, i: int) -> Batch:
        if i not in self._decoded:
            span = self.spans[i]
            blocks = [batch for _, batch, _ in self.file.blocks(span.group, span.row0)]
            self._decoded[i] = tuple(np.concatenate(cols) for cols in zip(*blocks, strict=True))  # type: ignore
            while len(self._decoded) > _KEEP_GROUPS:
                del self._decoded[next(iter(self._decoded))]
        return self._decoded[i]


class ShardedRows:
    """The trace's rows as the window walk reads them (the `Rows` of `load_aware`), from a sharded pass.

    Counts of rows before a time come from the shards' edge counts when the time is an edge they counted, else
    from reading the file.

    Args:
        reader: the file's rows.
        edges: the shards' edge counts, merged.
    """

    def __init__(self, reader: RowGroupReader, edges: list[EdgeCounts]) -> None:
        self.reader, self.edges = reader, edges
        self.start = 0

    @property
    def stop(self) -> int:
        """One past the last row."""
        return self.reader.rows

    def index(self, times_s: list[float]) -> np.ndarray:
        """For each time, the index of the first row arriving at or after it (at least `start`)."""
        return np.array([max(self._count_before(float(t)), self.start) for t in times_s], np.int64)

    def take(self, start: int, stop: int) -> Batch:
        """Rows [start, stop)."""
        return self.reader.take(start, stop)

    def drop_before(self, time_s: float) -> None:
        """Move `start` past the rows before `time_s`, as the stream's buffer forgets them."""
        self.start = int(self.index([time_s])[0])

    def _count_before(self, time_s: float) -> int:
        for edges in self.edges:
            found = edges.lookup(time_s)
            if found is not None:
                return found
        return self.reader.count_before(time_s)


@dataclass(frozen=True, slots=True)
class WindowTask:
    """What every window simulation task needs besides its rows.

    Attributes:
        sim: the serving configuration.
        cost: the cost model.
        seats: the per-request cost terms.
        pad_coverage: see `LoadAwareConfig`.
        reader: the file's rows.
    """

    sim: SimConfig
    cost: CostModel
    seats: SeatModel
    pad_coverage: float
    reader: RowGroupReader


def simulate_window(task: WindowTask, rows: SampleRows) -> tuple[Operating, float, int]:
    """One window's simulation (a task): its operating point, its requests' seat time, requests simulated."""
    trace, own = rows.read(task.reader)
    op, hold_s = operating_point(task.sim, task.cost, task.seats, task.pad_coverage, trace, own)
    return op, hold_s, len(trace)


class _Replan(Exception):
    """Internal: the walk needs a simulation this round did not plan (a pad grew)."""


_PLANNED = Operating(math.nan, math.nan, math.nan)  # what a planning walk gets in place of a simulation


def plan_simulations(projector: LoadAwareProjector, most: int) -> list[SampleRows]:
    """The next simulations (at most `most`) the windows left need if no pad grows, found by a fork of the walk.

    The projector itself is unchanged.
    """
    planner, planned = projector.fork(), []

    def plan(k: int) -> tuple[Operating, float, int]:
        planned.append(planner.sample_rows(k))
        if len(planned) >= most:
            raise _Replan()
        return _PLANNED, 0.0, 0

    try:
        planner.finish_windows(plan)
    except _Replan:
        pass
    return planned


def _planned_result(load: LoadAwareProjector, pad_s: float, results: dict[int, tuple[Operating, float, int]],
                    k: int) -> tuple[Operating, float, int]:
    """Window k's simulation from this round's results (each used once).

    Raises `_Replan` when it was not planned, or was planned with pads (`pad_s`) that have grown since.
    """
    if k not in results or load.pad_s != pad_s:
        raise _Replan()
    return results.pop(k)


def _values(outcomes: list[Outcome], what: Callable[[int], str]) -> list[Any]:
    """The tasks' values; the first failure is raised, noting which task failed and where."""
    for i, outcome in enumerate(outcomes):
        if not outcome.ok:
            err = outcome.error
            if hasattr(err, "add_note"):  # Python >= 3.11: a bug's traceback then shows the worker's too
                err.add_note(f"{what(i)} failed in a worker:\n{outcome.traceback}")
            raise err  # type: ignore[misc]
    return [o.value for o in outcomes]


class _Ticks:
    """One progress bar over the shards read and the simulations run, whose total grows as rounds are planned."""

    def __init__(self, progress: ProgressFn | None) -> None:
        self.progress, self.done, self.total = progress, 0, 0

    def phase(self, tasks: int) -> ProgressFn | None:
        base = self.done
        self.total += tasks

        def tick(done: int, _: int) -> None:
            self.done = base + done
            if self.progress is not None:
                self.progress(self.done, self.total)

        return tick


def project_sharded(source: str | Path | Trace, profile: GPUProfile | None, executor: Any,
                    config: ProjectConfig | None = None, *, fmt: str | None = None,
                    options: LoadOptions | None = None, progress: ProgressFn | None = None,
                    batch_rows: int = 1 << 20, shards: int | None = None) -> Projection:
    """Project a trace as `projection.project` does, its Parquet row groups and window simulations run as tasks.

    Args:
        source: a trace file, a bundled trace name, or a loaded Trace (those and non-Parquet files: one pass).
        profile: the calibrated profile (None only with a roofline `config.sim.cost`).
        executor: runs the tasks (`sim.parallel.open_executor`).
        config: estimators and their settings.
        fmt: trace format (default: detect).
        options: load options.
        progress: called as progress(done, total) as shards and simulations finish.
        batch_rows: rows per record batch.
        shards: how many shards (default: `SHARDS_PER_WORKER` per worker).

    Returns:
        The Projection (nothing is written).
    """
    config, options = config or ProjectConfig(), options or LoadOptions()
    one_pass = {"fmt": fmt, "options": options, "progress": progress, "batch_rows": batch_rows}
    if isinstance(source, Trace):
        return project(source, profile, config, **one_pass)
    plan = plan_load(source, fmt, options)
    if plan.sniffed.container != "parquet" or options.whole_table or plan.cmap.arrival_s is None:
        logger.info("%s: not a Parquet file with arrivals (or its arrivals are made up); projected in one pass",
                    plan.source)
        return project(source, profile, config, **one_pass)
    pricing = Pricing.of(config, profile)
    file = TraceFile(plan, options.zero_output, _first_ref(plan), batch_rows)
    parts = plan_shards(plan.sniffed.path, shards or SHARDS_PER_WORKER * executor.workers)
    load = LoadAwareProjector(pricing.cost, config.sim, config.load) if "load-aware" in config.estimators else None
    pad = config.load.pad_s
    task = ScanTask(file, config.load.window_s, (-pad, 0.0, pad) if load else (), config, pricing,
                    load.terms if load else None)
    ticks = _Ticks(progress)
    scans = _values(executor.map(scan_shard, parts, task, on_done=ticks.phase(len(parts))),
                    lambda i: f"{plan.source}: shard {i} (row groups {_groups(parts[i])})")
    if not _in_order(scans):
        logger.info("%s: arrivals are not in order across row groups; projecting in one pass", plan.source)
        return project(source, profile, config, **one_pass)
    read, dropped = sum(s.rows_read for s in scans), sum(s.rows_dropped for s in scans)
    if read == 0:
        raise TraceFormatError(f"{plan.source}: no requests (the file has a header but no rows)")
    sums = StreamSums(config, pricing.theory_sums(config), load.terms if load else None)
    for scan in scans:
        sums.merge(scan.sums)
    estimate = None
    if load is not None and sums.rows:
        edges = EdgeCounts(config.load.window_s, task.edge_offsets)
        for scan in scans:
            edges.merge(scan.edges)
        reader = RowGroupReader(file, [span for scan in scans for span in scan.spans])
        load.rows = ShardedRows(reader, [edges])
        _walk_windows(load, executor, WindowTask(load.sim, load.cost, load.seats, config.load.pad_coverage, reader),
                      parts, ticks)
        estimate = load.total()
    return projection_of(plan.source, StreamInfo(plan.source, read, dropped), sums, estimate, pricing, config)


def _walk_windows(load: LoadAwareProjector, executor: Any, task: WindowTask, parts: list[Shard],
                  ticks: _Ticks) -> None:
    """Price every window, the simulations run as tasks in rounds (see the module docstring).

    A round plans as many simulations as there are workers, twice as many as the last round when no pad grew (up to
    `_MOST_AHEAD` per worker): after a pad grows, the simulations planned past it are wasted, and pads grow most
    near the trace's start, where the first simulations show how long requests hold a seat.
    """
    most = executor.workers
    while len(load.ops) < len(load.sums):
        planned = plan_simulations(load, most)
        windows = [rows.window for rows in planned]
        values = _values(executor.map(simulate_window, planned, task, on_done=ticks.phase(len(planned))),
                         lambda i, windows=windows: f"simulation of window {windows[i]}")
        pad = load.pad_s
        try:
            load.finish_windows(functools.partial(_planned_result, load, pad, dict(zip(windows, values, strict=True))))
        except _Replan:
            logger.info("pads grew to %.1f s at window %d; planning the simulations again", load.pad_s, len(load.ops))
        if load.pad_s != pad:
            _count_pad_edges(load, executor, task.reader.file, parts, ticks)
        most = executor.workers if load.pad_s != pad else min(2 * most, _MOST_AHEAD * executor.workers)


def _count_pad_edges(load: LoadAwareProjector, executor: Any, file: TraceFile, parts: list[Shard],
                     ticks: _Ticks) -> None:
    """Have the shards count the rows before the edges of the new pads, so the walk need not read the file."""
    pad = load.pad_s
    task = ScanTask(file, load.config.window_s, (-pad, pad))
    scans = _values(executor.map(scan_shard, parts, task, on_done=ticks.phase(len(parts))),
                    lambda i: f"{file.plan.source}: shard {i} (row groups {_groups(parts[i])})")
    edges = EdgeCounts(load.config.window_s, task.edge_offsets)
    for scan in scans:
        edges.merge(scan.edges)
    load.rows.edges.append(edges)  # type: ignore[attr-defined]


def _first_ref(plan: LoadPlan) -> Any:
    """The arrival reference the streamed pass uses: the file's first row's (read from its first non-empty group)."""
    parquet = pq.ParquetFile(str(plan.sniffed.path), pre_buffer=False)
    for group in range(parquet.metadata.num_row_groups):
        if parquet.metadata.row_group(group).num_rows:
            table = parquet.read_row_group(group, columns=list(plan.cmap.source_columns)).slice(0, 1)
            with located_rows(plan.sniffed):
                return convert(table, plan.cmap, plan.source, 0, None).ref
    return None


def _in_order(scans: list[ShardScan]) -> bool:
    last = -math.inf
    for scan in scans:
        if not scan.in_order or scan.first_s < last:
            return False
        last = scan.last_s if scan.rows_read else last
    return True


def _groups(shard: Shard) -> str:
    return f"{shard.groups[0]}-{shard.groups[-1]}" if len(shard.groups) > 1 else str(shard.groups[0])
