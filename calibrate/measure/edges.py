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

A step first seen by a read happened between the previous read's start and this read's end; its time is taken at
the middle. Bound (`bound_j`): idle power x half of both edges' timing spans, plus the idle power's own timing error
over the margins. Assumed: the GPU draws its idle power in the margins (after the work ends it drops to idle within
one 100 ms power sample on the H200 timelines of 2026-12-03, which this assumption cannot see inside). A meter
without energy returns None; a continuous counter (no period) or one that does not step within `timeout_periods`
periods falls back to the plain window difference, with `aligned` False.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tokenjoule.calibrate.measure.meters import EnergyMeter

POLL_S = 5e-4
TIMEOUT_PERIODS = 5


@dataclass(frozen=True, slots=True)
class _Step:
    """One GPU's counter step: when (midpoint estimate), how uncertain (full span), and the new value (J)."""

    time_s: float
    span_s: float
    energy_j: float


@dataclass(frozen=True, slots=True)
class EdgeWindow:
    """An open edge-aligned window: where each GPU's count starts and its idle power.

    Attributes:
        start_s: meter-clock time the work starts (the window's time origin).
        begin: per GPU, the counter step the count starts at.
        idle_power_w: per GPU, idle power measured between two steps right before (None: not aligned).
        idle_rel_error: per GPU, the idle power's relative timing error (its two steps' spans over their distance).
        raw_begin_j: per GPU, a plain counter read at `start_s` (the unaligned window's start).
    """

    start_s: float
    begin: dict[int, _Step] | None
    idle_power_w: dict[int, float] | None
    idle_rel_error: dict[int, float] | None
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


def _poll_steps(meter: EnergyMeter, count: int, sleep: Callable[[float], None],
                timeout_s: float) -> dict[int, list[_Step]] | None:
    """Poll until every GPU's counter has stepped `count` times; None after `timeout_s`."""
    clock = meter.clock
    before = clock()
    last = meter.read_energy_j() or {}
    prev_before = before
    steps: dict[int, list[_Step]] = {g: [] for g in meter.gpu_indices}
    deadline = before + timeout_s
    while any(len(s) < count for s in steps.values()):
        if clock() > deadline:
            return None
        sleep(POLL_S)
        before = clock()
        values = meter.read_energy_j() or {}
        after = clock()
        for gpu, energy in values.items():
            if energy != last.get(gpu) and len(steps[gpu]) < count:
                steps[gpu].append(_Step((prev_before + after) / 2, after - prev_before, energy))
        last, prev_before = values, before
    return steps


def open_at_tick(meter: EnergyMeter, sleep: Callable[[float], None] = time.sleep) -> EdgeWindow:
    """Synchronize, measure idle power between two counter steps, and open the window at the second one."""
    meter.sync()
    period = meter.update_period_s if meter.has_energy else None
    steps = _poll_steps(meter, 2, sleep, TIMEOUT_PERIODS * period) if period else None
    start = meter.clock()
    raw = meter.read_energy_j() if meter.has_energy else None
    if steps is None:
        return EdgeWindow(start, None, None, None, raw)
    idle = {g: (b.energy_j - a.energy_j) / (b.time_s - a.time_s) for g, (a, b) in steps.items()}
    rel = {g: (a.span_s + b.span_s) / 2 / (b.time_s - a.time_s) for g, (a, b) in steps.items()}
    return EdgeWindow(start, {g: s[1] for g, s in steps.items()}, idle, rel, raw)


def close_at_tick(meter: EnergyMeter, window: EdgeWindow, sleep: Callable[[float], None] = time.sleep) -> EdgeEnergy:
    """Synchronize, wait for the next counter step, and return the work's energy (see the module docstring)."""
    meter.sync()
    end = meter.clock()
    raw_end = meter.read_energy_j() if window.raw_begin_j is not None else None
    raw = (sum(raw_end[g] - window.raw_begin_j[g] for g in meter.gpu_indices)
           if raw_end is not None and window.raw_begin_j is not None else None)
    period = meter.update_period_s
    steps = (_poll_steps(meter, 1, sleep, TIMEOUT_PERIODS * period)
             if window.begin is not None and period else None)
    if steps is None or window.begin is None or window.idle_power_w is None or window.idle_rel_error is None:
        return EdgeEnergy(end - window.start_s, raw, False, None, raw)
    energy, bound, lead, trail = 0.0, 0.0, 0.0, 0.0
    for g, begin in window.begin.items():
        stop, idle = steps[g][0], window.idle_power_w[g]
        margins = (window.start_s - begin.time_s) + (stop.time_s - end)
        energy += stop.energy_j - begin.energy_j - idle * margins
        # the edges' timing, and the idle power's own timing error over the margins
        bound += idle * (begin.span_s + stop.span_s) / 2 + idle * window.idle_rel_error[g] * margins
        lead, trail = max(lead, window.start_s - begin.time_s), max(trail, stop.time_s - end)
    return EdgeEnergy(end - window.start_s, energy, True, bound, raw, lead, trail, sum(window.idle_power_w.values()))
