"""Drive an IterationRunner over the calibration grid and write tidy rows to Parquet as they come (resumable).

Repeats are interleaved: pass r measures one tick-aligned window (`aligned.measure_aligned`) of every point, after
`runner.prepare(shape)` and warm-up steps, then pass r + 1 goes over the grid again in the opposite direction. A
host that slows down for a minute (launch-bound engines on shared VMs drift by tens of percent) then spoils one
repeat of the points it overlaps, not every repeat of them, and the median over repeats drops it. Points whose
main repeats still disagree get `extra_repeats` more passes at the end (`noisy_points`). Before the grid,
the GPU is brought to a steady temperature; after it, idle power is measured with the model resident. The Parquet
file is rewritten atomically after every window, so an interrupted sweep resumes where it stopped: (point, repeat)
pairs already in the file are skipped.

The runner contract (implemented in `tokenjoule.kernels`): `kv_capacity_tokens`, `prepare(shape)` (ValueError if
the shape cannot run), `step()` (one iteration as the serving loop runs it, synchronized at its end, repeatable),
`release()`.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from tokenjoule.calibrate.cost_form import shape_features
from tokenjoule.calibrate.measure.aligned import AlignedMeasurement, measure_aligned
from tokenjoule.calibrate.measure.meters import EnergyMeter
from tokenjoule.calibrate.measure.timing import summarize
from tokenjoule.calibrate.sweep.grid import GridConfig, GridPoint, grid_points
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.traces.files import write_atomic

logger = logging.getLogger(__name__)

RAW_SCHEMA = pa.schema([
    ("point_id", pa.string()), ("kind", pa.string()), ("repeat", pa.int32()), ("status", pa.string()),
    ("reason", pa.string()), ("prefill_json", pa.string()), ("decode_json", pa.string()),
    ("new_tokens", pa.int64()), ("prefill_tokens", pa.int64()), ("decode_seqs", pa.int64()),
    ("prefill_attn_pairs", pa.int64()), ("decode_ctx_tokens", pa.int64()), ("has_prefill", pa.float64()),
    ("steps", pa.int32()), ("window_s", pa.float64()), ("step_time_s", pa.float64()),
    ("step_median_s", pa.float64()), ("step_p10_s", pa.float64()), ("step_p90_s", pa.float64()),
    ("energy_per_step_j", pa.float64()), ("power_w", pa.float64()), ("error_bound", pa.float64()),
    ("tick_span_s", pa.float64()), ("window_energy_j", pa.float64()), ("unix_time_s", pa.float64()),
    ("output_tokens", pa.int64()),  # new tokens a generate() call produced (kind "generate"); None for other kinds
    ("warmup_tokens", pa.int64()),  # new tokens of the warm-up call before a generate() window; None for other kinds
])
# Columns added after raw files were first shipped: an older file lacking them reads as None there.
OPTIONAL_COLUMNS = ("output_tokens", "warmup_tokens")


class IterationRunner(Protocol):
    """What a sweep needs from an engine (see the module docstring)."""

    kv_capacity_tokens: int

    def prepare(self, shape: IterationShape) -> None:
        """Set up the sequences and KV cache so `step()` runs `shape` (ValueError if it cannot)."""

    def step(self) -> None:
        """Run one iteration, synchronized at its end."""

    def release(self) -> None:
        """Free the engine's memory."""


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a raw sweep file ([] when it does not exist); a foreign schema raises ValueError."""
    path = Path(path)
    if not path.exists():
        return []
    table = pq.read_table(path)
    missing = sorted(set(RAW_SCHEMA.names) - set(table.column_names) - set(OPTIONAL_COLUMNS))
    if missing:
        raise ValueError(f"{path}: not a tokenjoule raw sweep file (missing columns {missing})")
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            field = RAW_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(RAW_SCHEMA.names).to_pylist()


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write rows atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=RAW_SCHEMA)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def shape_from_row(row: dict[str, Any]) -> IterationShape:
    """The IterationShape a raw row measured."""
    prefill = tuple((int(n), int(b)) for n, b in json.loads(row["prefill_json"] or "[]"))
    return IterationShape(prefill=prefill, decode=tuple(int(c) for c in json.loads(row["decode_json"] or "[]")))


def base_row(point_id: str, kind: str, shape: IterationShape, repeat: int) -> dict[str, Any]:
    """A raw row of `RAW_SCHEMA` for one repeat of a point: its shape and features filled, measurements empty."""
    feats = shape_features(shape)
    row = dict.fromkeys(RAW_SCHEMA.names)
    row.update(point_id=point_id, kind=kind, repeat=repeat, status="ok", reason="",
               prefill_json=json.dumps([list(c) for c in shape.prefill]), decode_json=json.dumps(list(shape.decode)),
               new_tokens=shape.new_tokens, prefill_tokens=shape.prefill_tokens, decode_seqs=shape.decode_seqs,
               prefill_attn_pairs=shape.prefill_attn_pairs, decode_ctx_tokens=shape.decode_ctx_tokens,
               has_prefill=feats["has_prefill"], unix_time_s=time.time())
    return row


def measure_point(runner: IterationRunner, meter: EnergyMeter, point: GridPoint, cfg: GridConfig,
                  repeat: int = 0) -> dict[str, Any]:
    """One row for one point: a tick-aligned window after warm-up, or a "skipped" row if the runner cannot run it."""
    row = base_row(point.point_id, point.kind, point.shape, repeat)
    try:
        runner.prepare(point.shape)
    except ValueError as err:
        logger.info("skipping %s: %s", point.point_id, err)
        row.update(status="skipped", reason=str(err))
        return row
    m = measure_aligned(meter, runner.step, target_s=cfg.target_s, warmup_steps=cfg.warmup_steps)
    row.update(window_fields(m))
    return row


def window_fields(m: AlignedMeasurement) -> dict[str, Any]:
    """The raw-row columns of one measured window: steps, time and its spread, energy, power, error bound."""
    stats = summarize(m.step_times_s)
    return {"steps": m.steps, "window_s": m.time_s, "step_time_s": m.step_time_s, "step_median_s": stats.median_s,
            "step_p10_s": stats.p10_s, "step_p90_s": stats.p90_s, "energy_per_step_j": m.energy_per_step_j,
            "power_w": m.power_w, "error_bound": m.error_bound, "tick_span_s": m.tick_span_s,
            "window_energy_j": m.window_energy_j}


def measure_idle(meter: EnergyMeter, cfg: GridConfig, wait: Callable[[float], None]) -> dict[str, Any]:
    """One row of idle power (model resident, nothing running), measured between counter ticks."""
    wait(1.0)  # let the last kernels' power tail decay
    m = measure_aligned(meter, lambda: wait(0.05), target_s=cfg.idle_s, warmup_steps=0)
    row = base_row("idle", "idle", IterationShape(), 0)
    row.update(steps=m.steps, window_s=m.time_s, power_w=m.power_w, error_bound=m.error_bound,
               tick_span_s=m.tick_span_s, window_energy_j=m.window_energy_j)
    return row


def settle(runner: IterationRunner, meter: EnergyMeter, points: list[GridPoint], cfg: GridConfig,
           read_temperature_c: Callable[[], float] | None) -> float:
    """Run the grid's largest prefill until the temperature is steady (or `cfg.settle_s` passes); seconds spent."""
    if cfg.settle_s <= 0 or not points:
        return 0.0
    biggest = max(points, key=lambda p: p.shape.new_tokens)
    runner.prepare(biggest.shape)
    start = meter.clock()
    if read_temperature_c is None:
        while meter.clock() - start < cfg.settle_s:
            runner.step()
        return meter.clock() - start
    from tokenjoule.calibrate.measure.sampler import wait_thermal_settled

    spent, temp = wait_thermal_settled(read_temperature_c, runner.step, window_s=min(5.0, cfg.settle_s / 2),
                                       max_s=cfg.settle_s, clock=meter.clock)
    logger.info("thermal settling: %.1f s, %.0f C", spent, temp)
    return spent


def run_sweep(runner: IterationRunner, meter: EnergyMeter, cfg: GridConfig, out_path: str | Path, *,
              max_num_batched_tokens: int, max_num_seqs: int, uniform_only: bool = False,
              wait: Callable[[float], None] = time.sleep, read_temperature_c: Callable[[], float] | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Measure every grid point not yet in `out_path`, then idle power; returns all rows (old and new).

    Args:
        runner: the engine under test, model loaded.
        meter: energy meter of the runner's GPUs.
        cfg: grid and window settings.
        out_path: raw Parquet file; rewritten atomically after each point.
        max_num_batched_tokens: the engine's token budget per iteration.
        max_num_seqs: the engine's sequence limit per iteration.
        uniform_only: skip mixed iterations (engines that only run uniform batches, e.g. HF).
        wait: sleeps this many seconds (idle measurement; tests pass the fake timeline's `idle`).
        read_temperature_c: GPU temperature for thermal settling (None: settle for a fixed time).
        progress: show a rich progress bar on stderr.

    Returns:
        All raw rows.
    """
    rows = read_rows(out_path)
    done = {(r["point_id"], r["repeat"]) for r in rows}
    points = grid_points(cfg, max_num_batched_tokens, runner.kv_capacity_tokens, max_num_seqs, uniform_only)
    todo = [(r, p) for r, p in passes(points, range(cfg.repeats)) if (p.point_id, r) not in done]
    if done:
        logger.info("resuming %s: %d windows done, %d to go (before any extra passes)", out_path, len(done),
                    len(todo))
    if todo:
        settle(runner, meter, [p for _, p in todo], cfg, read_temperature_c)
    with sweep_progress(progress) as bar:
        task = bar.add_task("calibrating", total=len(todo) + (("idle", 0) not in done))
        _measure_passes(runner, meter, cfg, todo, rows, out_path, bar, task)
        noisy = noisy_points(rows, points, cfg)
        extra = [(r, p) for r, p in passes(noisy, range(cfg.repeats, cfg.repeats + cfg.extra_repeats))
                 if (p.point_id, r) not in done]
        if extra:
            logger.info("%d of %d points disagree by more than %.0f%% over their first %d repeats: %d more windows",
                        len(noisy), len(points), 100 * cfg.noisy_spread, cfg.repeats, len(extra))
            bar.update(task, total=bar.tasks[task].total + len(extra))
            if not todo:  # resumed after the main passes: the GPU has not been warmed yet
                settle(runner, meter, [p for _, p in extra], cfg, read_temperature_c)
            _measure_passes(runner, meter, cfg, extra, rows, out_path, bar, task)
        finish_with_idle(rows, done, out_path, meter, cfg, wait, bar, task)
    return rows


P = TypeVar("P")


def passes(points: list[P], repeats: range) -> list[tuple[int, P]]:
    """(repeat, point) in measuring order: one pass over `points` per repeat, every other pass backwards."""
    return [(r, p) for r in repeats for p in (points if r % 2 == 0 else points[::-1])]


def main_repeat_times(rows: list[dict[str, Any]], cfg: GridConfig) -> dict[str, list[float]]:
    """point_id -> step times of its ok windows from the main repeats (extra passes left out)."""
    times: dict[str, list[float]] = {}
    for r in rows:
        if r["status"] == "ok" and r["kind"] != "idle" and r["repeat"] < cfg.repeats:
            times.setdefault(r["point_id"], []).append(r["step_time_s"])
    return times


def disagree(times: list[float], cfg: GridConfig) -> bool:
    """Whether two or more windows' step times spread by more than `cfg.noisy_spread` of their median."""
    return len(times) >= 2 and max(times) - min(times) > cfg.noisy_spread * statistics.median(times)


def noisy_points(rows: list[dict[str, Any]], points: list[GridPoint], cfg: GridConfig) -> list[GridPoint]:
    """Points whose main repeats disagree (`disagree`); none when `cfg.extra_repeats` is 0."""
    if not cfg.extra_repeats:
        return []
    times = main_repeat_times(rows, cfg)
    return [p for p in points if disagree(times.get(p.point_id, []), cfg)]


def _measure_passes(runner: IterationRunner, meter: EnergyMeter, cfg: GridConfig, todo: list[tuple[int, GridPoint]],
                    rows: list[dict[str, Any]], out_path: str | Path, bar: Progress, task: TaskID) -> None:
    """Measure each (repeat, point) of `todo`, appending its row and rewriting the raw file after each."""
    skipped = {r["point_id"] for r in rows if r["status"] == "skipped"}
    for repeat, point in todo:
        bar.advance(task)
        if point.point_id in skipped:
            continue
        bar.update(task, description=f"{point.point_id} #{repeat}")
        row = measure_point(runner, meter, point, cfg, repeat)
        if row["status"] == "skipped":
            skipped.add(point.point_id)
        rows.append(row)
        write_rows(rows, out_path)
        log_point([row])


def finish_with_idle(rows: list[dict[str, Any]], done: set[tuple[str, int]], out_path: str | Path,
                     meter: EnergyMeter, cfg: GridConfig, wait: Callable[[float], None], bar: Progress,
                     task: TaskID) -> None:
    """Close a sweep: measure idle power (unless the file already has it) and write the rows."""
    if ("idle", 0) in done:
        return
    bar.update(task, description="idle power")
    rows.append(measure_idle(meter, cfg, wait))
    write_rows(rows, out_path)
    bar.advance(task)


def log_point(rows: list[dict[str, Any]]) -> None:
    """Log each row of a point at INFO: its steps, step time, energy, power and bound, or why it was skipped."""
    for r in rows:
        if r["status"] != "ok":
            logger.info("%s: skipped (%s)", r["point_id"], r["reason"])
            continue
        logger.info("%s #%d: %d steps of %.3f ms, %s J/step, %s W, bound %s", r["point_id"], r["repeat"], r["steps"],
                    r["step_time_s"] * 1e3, _g(r["energy_per_step_j"]), _g(r["power_w"]), _g(r["error_bound"]))


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def sweep_progress(enabled: bool) -> Progress:
    """The sweep's progress bar on stderr (points done of all; disabled when `enabled` is False)."""
    return Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)
