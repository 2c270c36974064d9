"""Calibrate the Hugging Face engine through `generate()` itself: the unit measured is one whole generate() call.

Why. A single forward pass (what `sweeps.py` times) leaves out what `generate()` adds to every step: logits
processors and stopping criteria, the attention mask and the DynamicCache growing by torch.cat, a host sync. On an
H100 a batch-4, 1,024-in / 128-out generate() measured 1,710 J where a forward-pass profile predicted 1,064 J. So
the HF engine is measured the way HF serves.

Method. For each (batch B, prompt L) of the grid, two calls are measured, each in its own window after a warm-up
call: G1 = generate(B, L, max_new_tokens=1), the prefill plus generate's per-call setup, and GN = generate(B, L,
1 + N), the same plus N decode steps. Repeats are interleaved (pass r over every point, pass r + 1 back the other
way), so host drift spoils one repeat of a point, not all. Raw rows (kind "generate") keep each call as measured;
`derive_fit_rows` (below) turns the pair of each repeat into the rows the profile's cost form takes: a
prefill point B x L costing G1, and a decode point (B sequences at the mean context of the N steps) costing
(GN - G1) / N per step, labelled as derived.

Windows start at an energy-counter tick (`aligned.measure_from_tick`). `aligned.measure_aligned` assumes the power is
steady across its window, which holds for many identical short steps but not for one or two whole calls: a call
draws little during its host-side setup, most during the prefill, then the decode's level, and the window's edges
fall at random points of that profile. On a fake engine whose prefill draws 3.6x its decode power that biased the
derived decode energy by -4% and prefill points by +-2%. Starting the calls right after a tick counts the call's
head exactly; only the rest of the call after the last tick (less than one counter period) is extrapolated, at the
power of the period before it.

Budget. The grid is pruned to the KV capacity and to a time budget: a probe times generate() at the smallest shape
(this host's per-call and per-step floors), a planning model adds compute and KV traffic from the ModelSpec, and
points are taken coarse-to-fine across the grid until the planned time is spent. The plan's numbers only choose
points; they are never recorded as measurements. Points either of whose calls disagree over the main repeats by more
than `noisy_spread` then get `extra_repeats` more passes, in what is left of the budget: generate() is launch-bound,
and its step time follows the host's speed phases (a 4 x 1,024 step at 25 or 44 ms minutes apart on one H200).
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rich.progress import Progress, TaskID

from tokenjoule.calibrate.measure.aligned import AlignedMeasurement, measure_from_tick
from tokenjoule.calibrate.measure.meters import EnergyMeter
from tokenjoule.calibrate.sweep.grid import KV_HEADROOM, GridConfig, GridPoint
from tokenjoule.calibrate.sweep.iterations import (
    base_row,
    disagree,
    finish_with_idle,
    log_point,
    main_repeat_times,
    passes,
    read_rows,
    settle,
    shape_from_row,
    sweep_progress,
    window_fields,
    write_rows,
)
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec

logger = logging.getLogger(__name__)

# Planning rates (only for choosing points within the budget): what HF eager bf16 reaches on an H100/H200.
PLAN_FLOPS_PER_S = 5e14
PLAN_BYTES_PER_S = 2.5e12
KV_PASSES = 3  # per decode step torch.cat reads and writes the whole cache, and attention reads it once more
POINT_SHARE = 0.1  # no single point may take more than this share of the budget (all its repeats)
# A long call's first window after a warm-up of only a few decode steps ran cold: 1.95-2.33x the later windows of the
# same call (median over 14 points, on each of three H200s: validation/h200_2026-12-0*_hf*), while one-token calls
# were not affected. So the warm-up runs the whole call; raw rows record its length (`warmup_tokens`).
LEGACY_WARMUP_NEW_TOKENS = 4  # what raw files without `warmup_tokens` warmed a long call with (1 + 4 new tokens)
OVERRUN = 1.5  # stop starting windows once the sweep has run this many times its budget
TICK_WAIT_S = 0.1  # planned wait for that tick (one NVML period on an H100, at most)


@dataclass(frozen=True, slots=True)
class GenerateGrid(GridConfig):
    """Grid of a generate()-based sweep (engine "hf"); its decode and mixed fields stay empty.

    A GridConfig, so a CalibrationConfig carries it and the profile's method block records it (with `new_tokens`
    and `budget_s`); decode points are derived from the calls, not measured as their own grid.

    Attributes:
        prefill_batches: batch sizes B of the generate() calls.
        prefill_lengths_tokens: prompt lengths L.
        new_tokens: N, the decode steps of the long call (it asks for 1 + N new tokens).
        target_s: least window per call measured (a call longer than this is one window).
        repeats: windows per call, one per interleaved pass (>= 2).
        warmup_steps: warm-up calls before each window (>= 1: the first draws the prompt).
        idle_s: idle-power window.
        settle_s: most time spent on thermal settling before the passes.
        budget_s: planned wall time of the whole sweep (probe, settling, windows, idle power).
    """

    prefill_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    prefill_lengths_tokens: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
    prefill_chunks: tuple[tuple[int, int], ...] = ()
    decode_batches: tuple[int, ...] = ()
    decode_contexts_tokens: tuple[int, ...] = ()
    mixed: bool = False
    mixed_chunks: tuple[tuple[int, int], ...] = ()
    mixed_decodes: tuple[tuple[int, int], ...] = ()
    target_s: float = 0.5
    repeats: int = 3
    warmup_steps: int = 1
    idle_s: float = 3.0
    settle_s: float = 10.0
    new_tokens: int = 32
    budget_s: float = 200.0

    def __post_init__(self) -> None:
        if self.repeats < 2 or self.warmup_steps < 1 or self.new_tokens < 1:
            raise ValueError(f"repeats={self.repeats} must be >= 2, warmup_steps={self.warmup_steps} >= 1, "
                             f"new_tokens={self.new_tokens} >= 1")
        if self.target_s <= 0 or self.idle_s <= 0 or self.settle_s < 0 or self.budget_s <= 0:
            raise ValueError(f"target_s={self.target_s}, idle_s={self.idle_s}, budget_s={self.budget_s} must be "
                             f"> 0, settle_s={self.settle_s} >= 0")
        for name in ("prefill_batches", "prefill_lengths_tokens"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"{name}={values} must be non-empty positive integers")

    @classmethod
    def quick(cls) -> GenerateGrid:
        """A smoke-test grid: four points, short calls, no settling."""
        return cls(prefill_batches=(1, 8), prefill_lengths_tokens=(128, 1024), new_tokens=8, target_s=0.25,
                   repeats=2, extra_repeats=0, idle_s=1.0, settle_s=0.0, budget_s=60.0)


class GenerateRunner(Protocol):
    """What the sweep needs from an engine: its model, its KV capacity and one synchronized generate() call."""

    spec: ModelSpec
    kv_capacity_tokens: int

    def generate(self, batch: int, prompt_tokens: int, new_tokens: int, streamer: Any = None) -> None:
        """One whole HF generation call, synchronized at its end (ValueError if the shape cannot run)."""


@dataclass(frozen=True, slots=True)
class TimeModel:
    """Planned wall time of generate() calls: measured floors plus modeled compute and KV traffic (planning only).

    Attributes:
        call_s: one call at the smallest shape with one new token (probe).
        step_s: one decode step at the smallest shape (probe).
        token_flops: FLOPs per token through the weights (2 x matmul parameters).
        pair_flops: FLOPs per attended (query, key) pair.
        kv_bytes_per_token: KV-cache bytes per token.
    """

    call_s: float
    step_s: float
    token_flops: float
    pair_flops: float
    kv_bytes_per_token: float

    @classmethod
    def from_spec(cls, spec: ModelSpec, call_s: float, step_s: float) -> TimeModel:
        """Probe floors plus the spec's per-token costs (`ModelSpec.flops_per_token`'s two terms)."""
        return cls(call_s, step_s, spec.matmul_flops_per_token, spec.attn_flops_per_context_token,
                   float(spec.kv_bytes_per_token))

    def call(self, batch: int, prompt_tokens: int, new_tokens: int) -> float:
        """Seconds of generate(batch, prompt_tokens, new_tokens)."""
        pairs = prompt_tokens * (prompt_tokens + 1) / 2
        prefill = batch * (prompt_tokens * self.token_flops + pairs * self.pair_flops) / PLAN_FLOPS_PER_S
        steps = new_tokens - 1
        ctx = prompt_tokens + steps / 2
        step = (self.step_s + batch * (self.token_flops + ctx * self.pair_flops) / PLAN_FLOPS_PER_S
                + KV_PASSES * batch * ctx * self.kv_bytes_per_token / PLAN_BYTES_PER_S)
        return self.call_s + prefill + steps * step

    def point(self, grid: GenerateGrid, batch: int, prompt_tokens: int) -> float:
        """Seconds of one repeat of a point: warm-ups and the windows of its short and long call."""
        short, long_ = self.call(batch, prompt_tokens, 1), self.call(batch, prompt_tokens, 1 + grid.new_tokens)
        return (grid.warmup_steps * (short + long_) + _window_s(short, grid.target_s)
                + _window_s(long_, grid.target_s) + 2 * TICK_WAIT_S)


def _window_s(call_s: float, target_s: float) -> float:
    return max(1, math.ceil(target_s / call_s)) * call_s if call_s > 0 else target_s


def call_id(batch: int, prompt_tokens: int, new_tokens: int) -> str:
    """Point id of a raw generate row, e.g. "gen_b4_l1024_n33"."""
    return f"gen_b{batch}_l{prompt_tokens}_n{new_tokens}"


def _level(index: int, count: int) -> int:
    """How coarse a grid index is: 0 for the ends, 1 for the middle, 2 for the quarters, ..."""
    k = 0
    while index not in {round(j * (count - 1) / 2**k) for j in range(2**k + 1)}:
        k += 1
    return k


def plan_points(grid: GenerateGrid, kv_capacity_tokens: int, model: TimeModel, budget_s: float,
                keep: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The (B, L) points to measure: within KV capacity, coarse-to-fine across the grid, until `budget_s` is spent.

    Args:
        grid: the grid.
        kv_capacity_tokens: KV tokens the engine holds (a point needs B x (L + N + 1)).
        model: planned call times.
        budget_s: seconds for the points (all repeats).
        keep: points already in the raw file, taken first (a resumed sweep completes them).

    Returns:
        Points in measuring order (by tokens per call).
    """
    limit = kv_capacity_tokens * KV_HEADROOM
    nb, nl = len(grid.prefill_batches), len(grid.prefill_lengths_tokens)
    candidates = [(_level(i, nb), _level(j, nl), b, length)
                  for i, b in enumerate(grid.prefill_batches) for j, length in enumerate(grid.prefill_lengths_tokens)
                  if b * (length + grid.new_tokens + 1) <= limit]
    order = sorted(candidates, key=lambda c: (max(c[0], c[1]), c[0] + c[1], model.point(grid, c[2], c[3])))
    chosen, spent = [], 0.0
    for b, length in [*keep, *((b, length) for _, _, b, length in order if (b, length) not in keep)]:
        cost = grid.repeats * model.point(grid, b, length)
        if (b, length) in keep or (cost <= POINT_SHARE * budget_s and spent + cost <= budget_s):
            chosen.append((b, length))
            spent += cost
    logger.info("generate sweep plan: %d of %d points, %.0f s planned of %.0f s", len(chosen), nb * nl, spent,
                budget_s)
    return sorted(chosen, key=lambda p: (p[0] * p[1], p[0]))


def probe(runner: GenerateRunner, grid: GenerateGrid, clock: Callable[[], float]) -> TimeModel:
    """Time generate() at the grid's smallest shape (after one untimed long call) and build the planning model.

    Untimed, the first long call ran 107 ms a step on an H200 where warm ones ran about 30 ms; timed, it planned the
    host check's four points out of its budget.
    """
    b, length = min(grid.prefill_batches), min(grid.prefill_lengths_tokens)
    runner.generate(b, length, 1 + grid.new_tokens)  # loads kernels, grows the allocator, runs cold once; not timed
    t0 = clock()
    runner.generate(b, length, 1)
    t1 = clock()
    runner.generate(b, length, 1 + grid.new_tokens)
    tn = clock() - t1
    short = t1 - t0
    logger.info("probe: generate(%d, %d, 1) %.3f s, %d more steps %.3f s", b, length, short, grid.new_tokens, tn)
    return TimeModel.from_spec(runner.spec, short, max(0.0, (tn - short) / grid.new_tokens))


class _PrefillCalls:
    """`settle()`'s runner: each step is one generate(B, L, 1) of the prepared prefill shape."""

    def __init__(self, runner: GenerateRunner) -> None:
        self.runner, self.kv_capacity_tokens = runner, runner.kv_capacity_tokens
        self.call: tuple[int, int] | None = None

    def prepare(self, shape: IterationShape) -> None:
        self.call = (len(shape.prefill), shape.prefill[0][0])

    def step(self) -> None:
        if self.call is not None:
            self.runner.generate(*self.call, 1)

    def release(self) -> None:
        self.call = None


def measure_call(runner: GenerateRunner, meter: EnergyMeter, grid: GenerateGrid, batch: int, prompt_tokens: int,
                 new_tokens: int, repeat: int, wait: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """One raw row: warm-up call(s), then a window of generate(batch, prompt_tokens, new_tokens) from a counter tick.

    The warm-up is the same call, whole (see `LEGACY_WARMUP_NEW_TOKENS`), recorded as the row's `warmup_tokens`. A
    shape that cannot run gives a "skipped" row.
    """
    row = base_row(call_id(batch, prompt_tokens, new_tokens), "generate",
                    IterationShape(prefill=((prompt_tokens, 0),) * batch), repeat)
    row.update(output_tokens=new_tokens, warmup_tokens=new_tokens)
    try:
        for _ in range(grid.warmup_steps):
            runner.generate(batch, prompt_tokens, new_tokens)
        m = measure_from_tick(meter, lambda: runner.generate(batch, prompt_tokens, new_tokens), grid.target_s, wait)
    except ValueError as err:
        logger.info("skipping %s: %s", row["point_id"], err)
        row.update(status="skipped", reason=str(err))
        return row
    row.update(window_fields(m))
    return row


def run_generate_sweep(runner: GenerateRunner, meter: EnergyMeter, grid: GenerateGrid, out_path: str | Path, *,
                       wait: Callable[[float], None] = time.sleep,
                       read_temperature_c: Callable[[], float] | None = None,
                       progress: bool = True) -> list[dict[str, Any]]:
    """Measure every planned (point, call, repeat) not yet in `out_path`, then idle power; returns all rows.

    Args:
        runner: the engine, model loaded.
        meter: energy meter of its GPU.
        grid: the generate grid and budget.
        out_path: raw Parquet file, rewritten atomically after each point of each pass.
        wait: sleeps this many seconds (idle measurement; tests pass the fake timeline's `idle`).
        read_temperature_c: GPU temperature for thermal settling (None: settle for a fixed time).
        progress: show a progress bar on stderr.

    Returns:
        All raw rows (old and new).
    """
    start = meter.clock()
    _ = meter.update_period_s  # infer the counter period now, not between a warm-up call and its window
    rows = read_rows(out_path)
    done = {(r["point_id"], r["repeat"]) for r in rows}
    skipped = {point_of(r) for r in rows if r["kind"] == "generate" and r["status"] == "skipped"}
    kept = sorted({point_of(r) for r in rows if r["kind"] == "generate"} - skipped)
    calls = (1, 1 + grid.new_tokens)
    model = probe(runner, grid, meter.clock)
    budget = grid.budget_s - (meter.clock() - start) - grid.settle_s - grid.idle_s - 1.0
    points = [p for p in plan_points(grid, runner.kv_capacity_tokens, model, budget, kept) if p not in skipped]
    todo = [(r, p) for r, p in passes(points, range(grid.repeats))
            if any((call_id(*p, n), r) not in done for n in calls)]
    if done:
        logger.info("resuming %s: %d windows done, %d point passes to go", out_path, len(done), len(todo))
    if todo:
        shapes = [GridPoint(call_id(b, length, 1), "prefill", IterationShape(prefill=((length, 0),) * b))
                  for b, length in points]
        settle(_PrefillCalls(runner), meter, shapes, grid, read_temperature_c)
    sweep = _Sweep(runner, meter, grid, out_path, rows, done, skipped, calls, wait)
    with sweep_progress(progress) as bar:
        task = bar.add_task("calibrating generate()", total=len(todo) + (("idle", 0) not in done))
        sweep.measure(todo, start + OVERRUN * grid.budget_s, bar, task)
        # extra passes over the points whose main repeats disagree, only in what is left of the planned budget
        extra = [(r, p) for r, p in passes(noisy_calls(rows, points, grid),
                                            range(grid.repeats, grid.repeats + grid.extra_repeats))
                 if any((call_id(*p, n), r) not in done for n in calls)]
        if extra:
            logger.info("%d generate() points disagree by more than %.0f%% over their first %d repeats: %d more "
                        "point passes, while the budget lasts", len({p for _, p in extra}), 100 * grid.noisy_spread,
                        grid.repeats, len(extra))
            bar.update(task, total=bar.tasks[task].total + len(extra))
            sweep.measure(extra, start + grid.budget_s, bar, task)
        finish_with_idle(rows, done, out_path, meter, grid, wait, bar, task)
    return rows


def noisy_calls(rows: list[dict[str, Any]], points: list[tuple[int, int]], grid: GenerateGrid) -> list[tuple[int, int]]:
    """(batch, prompt) points either of whose calls' main repeats spread by more than `grid.noisy_spread`."""
    if not grid.extra_repeats:
        return []
    times = main_repeat_times(rows, grid)
    return [p for p in points if any(disagree(times.get(call_id(*p, n), []), grid) for n in (1, 1 + grid.new_tokens))]


@dataclass
class _Sweep:
    """What every pass of a generate() sweep measures with, and the rows and skips it accumulates."""

    runner: GenerateRunner
    meter: EnergyMeter
    grid: GenerateGrid
    out_path: str | Path
    rows: list[dict[str, Any]]
    done: set[tuple[str, int]]
    skipped: set[tuple[int, int]]
    calls: tuple[int, int]
    wait: Callable[[float], None]

    def measure(self, todo: list[tuple[int, tuple[int, int]]], deadline: float, bar: Progress, task: TaskID) -> None:
        """Both calls of each (repeat, point) not yet done, until `deadline` on the meter's clock."""
        for repeat, (b, length) in todo:
            bar.advance(task)
            if (b, length) in self.skipped:
                continue
            if self.meter.clock() > deadline:
                logger.warning("generate sweep past its deadline: stopping before %s #%d", call_id(b, length, 1),
                               repeat)
                break
            bar.update(task, description=f"{call_id(b, length, self.calls[-1])} #{repeat}")
            for n in self.calls:
                if (call_id(b, length, n), repeat) in self.done:
                    continue
                row = measure_call(self.runner, self.meter, self.grid, b, length, n, repeat, self.wait)
                self.rows.append(row)
                log_point([row])
                if row["status"] == "skipped":
                    self.skipped.add((b, length))
                    break
            write_rows(self.rows, self.out_path)


def measure_generate_run(runner: GenerateRunner, meter: EnergyMeter, batch: int, prompt_tokens: int,
                         new_tokens: int, repeats: int = 3,
                         wait: Callable[[float], None] = time.sleep) -> list[AlignedMeasurement]:
    """`repeats` windows of one generate(batch, prompt_tokens, new_tokens) call each from a tick, after a warm-up."""
    runner.generate(batch, prompt_tokens, new_tokens)
    return [measure_from_tick(meter, lambda: runner.generate(batch, prompt_tokens, new_tokens), 0.25, wait)
            for _ in range(repeats)]


# ---- raw generate() rows -> the prefill and decode rows a fit uses ----------------------------------------------
def point_of(row: dict[str, Any]) -> tuple[int, int]:
    """(batch, prompt tokens) of a generate() row."""
    shape = shape_from_row(row)
    return len(shape.prefill), shape.prefill[0][0]


def _derived(source: dict[str, Any], point_id: str, kind: str, shape: IterationShape, time_s: float,
             energy_j: float | None, bound: float | None, steps: int, reason: str) -> dict[str, Any]:
    row = base_row(point_id, kind, shape, source["repeat"])
    row.update(reason=reason, steps=steps, step_time_s=time_s, energy_per_step_j=energy_j, error_bound=bound,
               power_w=None if energy_j is None else energy_j / time_s, unix_time_s=source["unix_time_s"])
    return row


def _decode_row(short: dict[str, Any], long_: dict[str, Any], batch: int, prompt: int) -> dict[str, Any] | None:
    n = long_["output_tokens"] - 1
    time_s = (long_["step_time_s"] - short["step_time_s"]) / n
    e1, en = short["energy_per_step_j"], long_["energy_per_step_j"]
    energy = None if e1 is None or en is None else (en - e1) / n
    if time_s <= 0 or (energy is not None and energy <= 0):
        logger.warning("%s #%d: the long call is not dearer than the short one; no decode point derived",
                       long_["point_id"], long_["repeat"])
        return None
    bound = None
    if energy is not None and short["error_bound"] is not None and long_["error_bound"] is not None:
        # each call's energy is off by at most its bound; the difference carries both absolute errors
        bound = (long_["error_bound"] * en + short["error_bound"] * e1) / (en - e1)
    ctx = prompt + n // 2  # the N steps read contexts L .. L + N - 1
    return _derived(long_, f"gen_b{batch}_l{prompt}_n{n + 1}_decode", "decode", IterationShape(decode=(ctx,) * batch),
                    time_s, energy, bound, n,
                    f"derived from generate({batch}, {prompt}, {n + 1}) - generate({batch}, {prompt}, 1), / {n} steps")


def warm_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` without the cold generate() windows: a long call's first window when its warm-up was shorter than it.

    Raw files written before the warm-up ran the whole call (no `warmup_tokens`) warmed a long call with
    1 + `LEGACY_WARMUP_NEW_TOKENS` new tokens, and the call's first window then ran cold (see that constant); its
    later windows followed an earlier window of the same call, so they were warm. Other rows pass through.
    """
    first: dict[str, int] = {}
    for r in rows:
        if r["kind"] == "generate" and r["status"] == "ok":
            first[r["point_id"]] = min(r["repeat"], first.get(r["point_id"], r["repeat"]))

    def cold(r: dict[str, Any]) -> bool:
        if r["kind"] != "generate" or r["status"] != "ok" or (r["output_tokens"] or 1) <= 1:
            return False
        warm = r.get("warmup_tokens") or 1 + LEGACY_WARMUP_NEW_TOKENS
        return warm < r["output_tokens"] and r["repeat"] == first[r["point_id"]]

    return [r for r in rows if not cold(r)]


def derive_fit_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a fit uses: generate() rows become derived prefill and decode rows; other rows pass through.

    Per point (B, L) and repeat r: a prefill row costing generate(B, L, 1), and for each longer call of the same
    repeat a decode row of B sequences at the mean context of its N steps, costing (GN - G1) / N per step; cold
    windows (`warm_rows`) are left out. Rows without generate rows come back unchanged, so raw files of
    forward-pass sweeps fit exactly as before.
    """
    if not any(r["kind"] == "generate" for r in rows):
        return list(rows)
    out = [r for r in rows if r["kind"] != "generate"]
    calls: dict[tuple[int, int, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in warm_rows(rows):
        if r["kind"] == "generate" and r["status"] == "ok":
            b, length = point_of(r)
            calls[(b, length, r["repeat"])][int(r["output_tokens"])] = r
    for (b, length, _), by_n in sorted(calls.items()):
        short = by_n.get(1)
        if short is None:
            continue
        out.append(_derived(short, f"gen_b{b}_l{length}_prefill", "prefill",
                            IterationShape(prefill=((length, 0),) * b), short["step_time_s"],
                            short["energy_per_step_j"], short["error_bound"], 1,
                            f"derived from generate({b}, {length}, 1)"))
        for n in sorted(k for k in by_n if k > 1):
            decode = _decode_row(short, by_n[n], b, length)
            if decode is not None:
                out.append(decode)
    return out
