"""Energy of a one-off window (a replayed scenario) with both edges on energy-counter ticks.

Why: `EnergyMeter.end_window` takes the difference of two counter reads. NVML's counter advances about every 100 ms,
so each read holds the energy up to its last tick, up to a period before the read: a window gains or misses up to a
period's energy at each edge. At ~300 W that is up to 30 J per edge, 9% of a 1.1 s scenario (the leave-one-model-out
validation's shortest, Llama-3.2-1B's static batch of 325 J on the H200). Long windows dilute it; short ones cannot.

Method (`open_at_tick`, then the work, then `close_at_tick`):

1. open: synchronize, then poll the counter with the GPU idle until it has stepped twice (per GPU): the energy
   between the two steps over the time between them is the GPU's idle power, and the window's energy count starts
   at the second step, its time `lead_s` before the work starts (milliseconds: the poll that saw the step);
2. close: synchronize when the work is done, then poll until the counter steps once more (within a period, the GPU
   idle meanwhile): the count ends there, `trail_s` after the work;
3. energy = counter difference - idle power x (lead_s + trail_s), summed over GPUs.

The steps are the meter's tick recorder's (`EnergyMeter.start_ticks`, run only while waiting for them): a step first
seen by a read happened between the previous read's start and this read's end; its time is taken at the middle.
Bound (`bound_j`): idle power x half of both edges' timing spans, plus the idle power's own timing error over the
margins. Assumed: the GPU draws its idle power in the margins (after the work ends it drops to idle within
one 100 ms power sample on the H200 timelines of 2026-12-03, which this assumption cannot see inside). A meter
without energy returns None; a continuous counter (no period) or one that does not step within `TIMEOUT_PERIODS`
periods falls back to the plain window difference, with `aligned` False.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenjoule.calibrate.measure.meters import EnergyMeter, Tick

POLL_S = 5e-4
TIMEOUT_PERIODS = 5


@dataclass(frozen=True, slots=True)
class _Start:
    """Where one GPU's count starts: its counter step, and the idle power measured up to it."""

    step: Tick
    idle_power_w: float
    idle_rel_error: float  # the idle power's relative timing error: its two steps' spans over their distance


@dataclass(frozen=True, slots=True)
class EdgeWindow:
    """An open window.

    Attributes:
        start_s: meter-clock time the work starts (the window's time origin).
        starts: per GPU, where its count starts (None: not aligned, the plain difference only).
        raw_begin_j: per GPU, a plain counter read at `start_s` (None without an energy counter).
    """

    start_s: float
    starts: dict[int, _Start] | None
    raw_begin_j: dict[int, float] | None


@dataclass(frozen=True, slots=True)
class EdgeEnergy:
    """A closed window's energy.

    Attributes:
        time_s: the work's length (start to the close's synchronize).
        energy_j: GPU energy of the work, summed over GPUs (None without an energy counter).
        aligned: whether both edges sat on counter steps (False: a plain counter difference).
        bound_j: the aligned energy's timing bound (None when not aligned).
        raw_energy_j: the plain counter difference over the same window (a cross-check; quantized by the counter).
        lead_s: longest time from a GPU's start step to the work's start.
        trail_s: longest time from the work's end to a GPU's end step.
        idle_power_w: summed idle power used for the margins.
    """

    time_s: float
    energy_j: float | None
    aligned: bool
    bound_j: float | None
    raw_energy_j: float | None
    lead_s: float = 0.0
    trail_s: float = 0.0
    idle_power_w: float | None = None


def _mid(tick: Tick) -> float:
    """A step's time: the middle of the span it may have happened in (as `aligned.py` takes it)."""
    return tick.time_s - tick.uncertainty_s / 2


def _steps(meter: EnergyMeter, count: int, sleep: Callable[[float], None]) -> dict[int, list[Tick]] | None:
    """Every GPU's first `count` counter steps from now (None: no period, or none within `TIMEOUT_PERIODS` periods).

    They come from the meter's tick recorder, which runs only while this waits: during the work it would take the
    interpreter from the engine.
    """
    period = meter.update_period_s if meter.has_energy else None
    if not period:
        return None
    deadline = meter.clock() + TIMEOUT_PERIODS * period
    meter.start_ticks()
    try:
        while True:
            ticks = meter.ticks()
            found = {g: [t for t in ticks if t.gpu == g][:count] for g in meter.gpu_indices}
            if all(len(v) == count for v in found.values()):
                return found
            if meter.clock() > deadline:
                return None
            sleep(POLL_S)
    finally:
        meter.stop_ticks()


def open_at_tick(meter: EnergyMeter, sleep: Callable[[float], None] = time.sleep) -> EdgeWindow:
    """Synchronize, measure idle power between two counter steps, and open the window at the second one."""
    meter.sync()
    steps = _steps(meter, 2, sleep)
    start = meter.clock()
    raw = meter.read_energy_j() if meter.has_energy else None
    if steps is None:
        return EdgeWindow(start, None, raw)
    starts = {}
    for g, (a, b) in steps.items():
        span = _mid(b) - _mid(a)
        starts[g] = _Start(b, (b.energy_j - a.energy_j) / span, (a.uncertainty_s + b.uncertainty_s) / 2 / span)
    return EdgeWindow(start, starts, raw)


def close_at_tick(meter: EnergyMeter, window: EdgeWindow, sleep: Callable[[float], None] = time.sleep) -> EdgeEnergy:
    """Synchronize, wait for the next counter step, and return the work's energy (see the module docstring)."""
    meter.sync()
    end = meter.clock()
    raw = None
    if window.raw_begin_j is not None:
        raw_end = meter.read_energy_j() or {}
        raw = sum(raw_end[g] - window.raw_begin_j[g] for g in meter.gpu_indices)
    steps = _steps(meter, 1, sleep) if window.starts is not None else None
    if steps is None or window.starts is None:
        return EdgeEnergy(end - window.start_s, raw, False, None, raw)
    energy, bound, lead, trail = 0.0, 0.0, 0.0, 0.0
    for g, begin in window.starts.items():
        stop = steps[g][0]
        lead_g, trail_g = window.start_s - _mid(begin.step), _mid(stop) - end
        energy += stop.energy_j - begin.step.energy_j - begin.idle_power_w * (lead_g + trail_g)
        # the edges' timing, and the idle power's own timing error over the margins
        bound += begin.idle_power_w * ((begin.step.uncertainty_s + stop.uncertainty_s) / 2
                                       + begin.idle_rel_error * (lead_g + trail_g))
        lead, trail = max(lead, lead_g), max(trail, trail_g)
    idle = sum(b.idle_power_w for b in window.starts.values())
    return EdgeEnergy(end - window.start_s, energy, True, bound, raw, lead, trail, idle)
