"""Tick-aligned measurement: per-iteration time and energy of a repeated step, each point good to better than 2%.

Method. NVML's energy counter advances in steps (about every 100 ms on H100), so the energy read at a window's
edges can be off by up to one step's worth of energy. Instead:

1. run `warmup_steps` of the same step right before the window, so the GPU is already drawing the point's
   power when the window opens (a counter that reports with a fixed delay then still measures this point);
2. open the window at t0 and run steps back to back (each synchronized at its end, as a serving loop runs them)
   until the window is >= `target_s` long AND every GPU's counter has stepped at least twice inside it, far
   enough apart that the bound below is <= 2% (or `max_s` passes);
3. take, per GPU, the first and last counter steps seen inside the window, at estimated times T1 < T2 with
   values E1 < E2: the GPU's power over the repeated step is (E2 - E1) / (T2 - T1) -- both edges lie on counter
   ticks, so no partial period enters;
4. energy per step = summed power x mean step time (window length / steps).

Bound. A background thread polls the counter (every 0.5 ms, but only near the expected tick; the GIL switch
interval is lowered meanwhile so a host-bound engine thread cannot delay it by more than ~0.1 ms) and
timestamps each step at the end of the read that saw it, with the time back to the start of the previous
read as its uncertainty u (the step happened inside that span). Estimating each tick at the
middle of that interval, the relative error of the power (hence of energy per step) from timing is at most
(u1 + u2) / (2 (T2 - T1)). u is two counter reads plus a poll gap, and a read's cost depends on the host: about
0.6 ms in all (0.6% at T2 - T1 = 100 ms) where the H100 calibrations ran, but on an H200 host (2026-12-02) the
energy read alone took 3.0 ms median (p90 5.7 ms; power and temperature reads 2 us), so u ~ 7.7 ms and the
window grows until T2 - T1 >~ 0.4 s (step 2). The counter's own resolution (1 mJ) adds < 0.01% at >= 100 W over
100 ms. The method assumes the steps' power is steady, which holds for identical back-to-back steps; every
result carries its computed `error_bound`, with a warning above 2%.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from tokenjoule.calibrate.measure.meters import EnergyMeter, Tick

MAX_ERROR = 0.02
METHOD_SUMMARY = ("tick-aligned: warm-up steps, then back-to-back steps until >= target_s and two counter ticks "
                  "inside the window; power = energy between the first and last tick / time between them "
                  "(ticks timestamped by a polling thread, uncertainty = poll gap); energy per step = power x mean "
                  "step time; per-point bound (u1 + u2) / (2 tick span) stored as error_bound")


@dataclass(frozen=True, slots=True)
class AlignedMeasurement:
    """One point measured by `measure_aligned`.

    Attributes:
        steps: steps run inside the window.
        time_s: window length (first step's start to last step's end).
        step_times_s: wall time of each step (host clock, step synchronized at its end).
        energy_per_step_j: energy of one step summed over GPUs (None without an energy counter).
        power_w: average power during the steps, summed over GPUs (None without energy).
        tick_span_s: time between the counter ticks used (smallest over GPUs; None when not tick-based).
        error_bound: relative error bound of `energy_per_step_j` from tick timing (None without energy).
        window_energy_j: plain counter difference over the window (a cross-check; quantized).
    """

    steps: int
    time_s: float
    step_times_s: tuple[float, ...]
    energy_per_step_j: float | None
    power_w: float | None
    tick_span_s: float | None
    error_bound: float | None
    window_energy_j: float | None

    @property
    def step_time_s(self) -> float:
        """Mean time per step."""
        return self.time_s / self.steps


def _usable_ticks(ticks: list[Tick], gpu: int, t0: float, t_end: float) -> list[Tick]:
    return [t for t in ticks if t.gpu == gpu and t.time_s - t.uncertainty_s >= t0 and t.time_s <= t_end]


def _enough_ticks(meter: EnergyMeter, t0: float, t_end: float) -> bool:
    ticks = meter.ticks()
    return all(len(_usable_ticks(ticks, g, t0, t_end)) >= 2 for g in meter.gpu_indices)


def _bound_met(meter: EnergyMeter, t0: float, t_end: float) -> bool:
    """Two ticks inside the window per GPU, and their timing bounds the energy within MAX_ERROR."""
    found = _power_from_ticks(meter.ticks(), meter.gpu_indices, t0, t_end)
    return found is not None and found[2] <= MAX_ERROR


def _power_from_ticks(ticks: list[Tick], gpus: tuple[int, ...], t0: float,
                      t_end: float) -> tuple[float, float, float] | None:
    """(summed power W, smallest tick span s, worst relative bound) or None when a GPU lacks two ticks."""
    power, span_min, bound = 0.0, float("inf"), 0.0
    for gpu in gpus:
        usable = _usable_ticks(ticks, gpu, t0, t_end)
        if len(usable) < 2:
            return None
        first, last = usable[0], usable[-1]
        span = (last.time_s - last.uncertainty_s / 2) - (first.time_s - first.uncertainty_s / 2)
        if span <= 0:
            return None
        power += (last.energy_j - first.energy_j) / span
        span_min = min(span_min, span)
        bound = max(bound, (first.uncertainty_s + last.uncertainty_s) / (2 * span))
    return power, span_min, bound


def measure_aligned(meter: EnergyMeter, step: Callable[[], None], target_s: float = 0.25, min_steps: int = 2,
                    warmup_steps: int = 1, max_s: float = 20.0) -> AlignedMeasurement:
    """Time and energy per step of `step`, measured between counter ticks (see the module docstring).

    Args:
        meter: the energy meter (its `sync` runs before the window; `step` must synchronize at its end).
        step: one iteration; repeatable.
        target_s: least window length.
        min_steps: least steps in the window.
        warmup_steps: steps run immediately before the window opens.
        max_s: stop extending the window past this (the result then warns and may lack energy).

    Returns:
        The AlignedMeasurement.
    """
    # decided first: a meter may infer its counter period on first use, which must not sit between warm-up and window
    tick_based = meter.has_energy and meter.update_period_s is not None
    for _ in range(warmup_steps):
        step()
    meter.sync()
    if tick_based:
        meter.start_ticks()
    try:
        def done(t0: float, now: float, steps: int) -> bool:
            return now - t0 >= target_s and steps >= min_steps and (
                not tick_based or _bound_met(meter, t0, now) or now - t0 >= max_s)

        times, t0, prev, e_begin, e_end = _back_to_back(meter, step, done)
    finally:
        ticks = meter.stop_ticks() if tick_based else []
    return _result(meter, times, t0, prev, ticks, e_begin, e_end, tick_based)


def _back_to_back(meter: EnergyMeter, step: Callable[[], None], done: Callable[[float, float, int], bool],
                  ) -> tuple[list[float], float, float, dict[int, float] | None, dict[int, float] | None]:
    """Run `step` back to back between two energy reads until `done(t0, now, steps)`.

    Returns (per-step seconds, window start, window end, energy read at the start, energy read at the end).
    """
    e_begin = meter.read_energy_j()
    t0 = prev = meter.clock()
    times: list[float] = []
    while True:
        step()
        now = meter.clock()
        times.append(now - prev)
        prev = now
        if done(t0, now, len(times)):
            return times, t0, prev, e_begin, meter.read_energy_j()


def _result(meter: EnergyMeter, times: list[float], t0: float, t_end: float, ticks: list[Tick],
            e_begin: dict[int, float] | None, e_end: dict[int, float] | None, tick_based: bool) -> AlignedMeasurement:
    time_s = t_end - t0
    window_j = None if e_begin is None or e_end is None else sum(e_end[g] - e_begin[g] for g in meter.gpu_indices)
    power = span = bound = None
    if tick_based:
        found = _power_from_ticks(ticks, meter.gpu_indices, t0, t_end)
        if found is None:
            warnings.warn(f"no two energy-counter ticks inside a {time_s:.2f} s window; energy left as None",
                          stacklevel=3)
        else:
            power, span, bound = found
    elif window_j is not None and time_s > 0:  # continuous counter (no update period): the window is exact
        power, bound = window_j / time_s, 0.0
    if bound is not None and bound > MAX_ERROR:
        warnings.warn(f"tick timing bounds this point's energy error at {bound:.1%} (> {MAX_ERROR:.0%}); "
                      "lengthen target_s or poll the counter faster", stacklevel=3)
    per_step = None if power is None else power * time_s / len(times)
    return AlignedMeasurement(len(times), time_s, tuple(times), per_step, power, span, bound, window_j)


# Windows that start at a counter tick (`measure_from_tick`).
TICK_POLL_S = 2e-4  # how often the host looks for the counter tick a window starts at
MAX_WINDOW_S = 60.0  # stop adding calls to a window past this, even without two ticks in it


def _ticked(ticks: list[Tick], gpus: tuple[int, ...]) -> bool:
    return {t.gpu for t in ticks} >= set(gpus)


def _mid(tick: Tick) -> float:
    return tick.time_s - tick.uncertainty_s / 2


def _energy_from_tick(ticks: list[Tick], gpu: int, t0: float, t_end: float) -> tuple[float, float, float] | None:
    """(energy J, tick span s, timing error J) of one GPU over [t0, t_end], or None without the ticks it needs.

    Energy = counter at the last tick inside the window - counter at the tick the window started at, plus the
    remainder after the last tick at the power of the counter period before it.
    """
    starts = [t for t in ticks if t.gpu == gpu and t.time_s <= t0]
    inside = _usable_ticks(ticks, gpu, t0, t_end)
    if not starts or len(inside) < 2:
        return None
    start, prev, last = starts[-1], inside[-2], inside[-1]
    tail_w = (last.energy_j - prev.energy_j) / (_mid(last) - _mid(prev))
    energy = last.energy_j - start.energy_j + tail_w * (t_end - _mid(last))
    # the start tick's timing, the host's delay before the first call and the last tick's timing, at the tail power
    timing_j = tail_w * (start.uncertainty_s / 2 + (t0 - start.time_s) + last.uncertainty_s / 2)
    return energy, _mid(last) - _mid(start), timing_j


def measure_from_tick(meter: EnergyMeter, call: Callable[[], None], target_s: float,
                      wait: Callable[[float], None] = time.sleep, max_calls: int | None = None) -> AlignedMeasurement:
    """Whole calls back to back from an energy-counter tick until >= `target_s` and two more ticks (or `max_calls`).

    Why not `measure_aligned`: see the module docstring (a call's power is not steady, and a window holds few calls).
    Assumes the counter reports each tick's energy without delay; `error_bound` covers the tick timing and the
    host's delay between the tick and the first call, not the tail's power changing within its last period. A
    counter without ticks (continuous, or no energy at all) uses `measure_aligned`, exact for it.

    Args:
        meter: the energy meter (one GPU: the wait is for every metered GPU's tick, then the calls start).
        call: one synchronized call, repeatable.
        target_s: least window.
        wait: sleeps this many seconds while waiting for the tick (tests pass the fake timeline's `idle`).
        max_calls: stop after this many calls even without two ticks (the energy is then None).

    Returns:
        The measurement: `energy_per_step_j` and `power_w` per call, over the whole window.
    """
    if not meter.has_energy or meter.update_period_s is None:
        return measure_aligned(meter, call, target_s=0.0 if max_calls else target_s, min_steps=1, warmup_steps=0)
    meter.sync()
    meter.start_ticks()
    try:
        for _ in range(int((3 * meter.update_period_s + 0.1) / TICK_POLL_S)):  # bounded even if `wait` is off
            if _ticked(meter.ticks(), meter.gpu_indices):
                break
            wait(TICK_POLL_S)
        def done(t0: float, now: float, calls: int) -> bool:
            return now - t0 >= MAX_WINDOW_S or calls == max_calls or (
                now - t0 >= target_s and _enough_ticks(meter, t0, now))

        times, t0, prev, e_begin, e_end = _back_to_back(meter, call, done)
    finally:
        ticks = meter.stop_ticks()
    found = [_energy_from_tick(ticks, g, t0, prev) for g in meter.gpu_indices]
    window_j = sum(e_end[g] - e_begin[g] for g in meter.gpu_indices)
    time_s = prev - t0
    if any(f is None for f in found):
        warnings.warn(f"no start tick or fewer than two ticks in a {time_s:.2f} s window; energy left as None",
                      stacklevel=2)
        return AlignedMeasurement(len(times), time_s, tuple(times), None, None, None, None, window_j)
    energy = sum(f[0] for f in found if f is not None)
    bound = sum(f[2] for f in found if f is not None) / energy
    span = min(f[1] for f in found if f is not None)
    return AlignedMeasurement(len(times), time_s, tuple(times), energy / len(times), energy / time_s, span, bound,
                              window_j)
