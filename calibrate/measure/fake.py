"""Meters without a GPU: `FakeMeter` (a deterministic power model on a simulated clock) and `ReplayMeter`.

Both share `EnergyMeter`'s API, so window logic, aligned measurement and whole sweeps run in CPU tests
(Zeus does the same with `ReplayZeusMonitor` in `zeus/utils/testing.py`).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tokenjoule.calibrate.measure.meters import EnergyMeter, Measurement, Tick
from tokenjoule.kernels.shape import IterationShape


class FakeTimeline:
    """A simulated clock plus piecewise-constant power per GPU; the fake runner advances it.

    Args:
        idle_power_w: power per GPU when nothing runs.
    """

    def __init__(self, idle_power_w: float = 60.0) -> None:
        self.idle_power_w = float(idle_power_w)
        self.now_s = 0.0
        # segment starts, the energy (J per GPU) accumulated at each start, and each segment's power
        self._starts: list[float] = [0.0]
        self._energy_at_start: list[float] = [0.0]
        self._power_w: list[float] = [self.idle_power_w]

    def clock(self) -> float:
        """Simulated time (s)."""
        return self.now_s

    def run(self, duration_s: float, power_w: float) -> None:
        """Spend `duration_s` at `power_w` per GPU, then fall back to idle power."""
        if duration_s < 0 or power_w < 0:
            raise ValueError(f"duration_s={duration_s} and power_w={power_w} must be >= 0")
        self._set_power(power_w)
        self.now_s += duration_s
        self._set_power(self.idle_power_w)

    def idle(self, duration_s: float) -> None:
        """Spend `duration_s` at idle power."""
        self.run(duration_s, self.idle_power_w)

    def _set_power(self, power_w: float) -> None:
        energy = self.energy_j(self.now_s)
        if self._starts[-1] == self.now_s:
            self._energy_at_start[-1], self._power_w[-1] = energy, power_w
        else:
            self._starts.append(self.now_s)
            self._energy_at_start.append(energy)
            self._power_w.append(power_w)

    def energy_j(self, t_s: float) -> float:
        """Exact energy per GPU from time 0 to `t_s`."""
        k = bisect.bisect_right(self._starts, t_s) - 1
        return self._energy_at_start[k] + self._power_w[k] * (t_s - self._starts[k])


class FakeMeter(EnergyMeter):
    """A meter over a FakeTimeline whose energy counter advances in steps, like NVML's.

    The counter of each GPU holds the energy up to the last tick at `phase_s + k * update_period_s`.

    Args:
        timeline: the simulated clock and power.
        gpu_indices: metered GPUs (each draws the timeline's power).
        update_period_s: counter step period; 0 means a continuous counter.
        phase_s: time of the first tick.
    """

    method = "fake"

    def __init__(self, timeline: FakeTimeline, gpu_indices: Sequence[int] = (0,), update_period_s: float = 0.1,
                 phase_s: float = 0.0) -> None:
        super().__init__(gpu_indices, clock=timeline.clock, sync=lambda: None)
        self.timeline = timeline
        self._period_s = float(update_period_s)
        self.phase_s = float(phase_s)
        self._ticks_from: float | None = None

    @property
    def update_period_s(self) -> float | None:
        """The configured counter period."""
        return self._period_s or None

    def _last_tick_s(self, t_s: float) -> float:
        if not self._period_s:
            return t_s
        return self.phase_s + math.floor((t_s - self.phase_s) / self._period_s + 1e-12) * self._period_s

    def read_energy_j(self) -> dict[int, float]:
        """Counter values now (quantized to the last tick)."""
        energy = self.timeline.energy_j(self._last_tick_s(self.timeline.now_s))
        return {i: energy for i in self.gpu_indices}

    def start_ticks(self) -> None:
        """Record ticks from now on."""
        self._ticks_from = self.timeline.now_s

    def ticks(self) -> list[Tick]:
        """Every tick between `start_ticks` and now, exactly timed."""
        if self._ticks_from is None or not self._period_s:
            return []
        out, t = [], self._last_tick_s(self._ticks_from) + self._period_s
        while t <= self.timeline.now_s + 1e-12:
            energy = self.timeline.energy_j(t)
            out.extend(Tick(t, i, energy, 0.0) for i in self.gpu_indices)
            t += self._period_s
        return out

    def stop_ticks(self) -> list[Tick]:
        """Stop recording and return the ticks."""
        out = self.ticks()
        self._ticks_from = None
        return out


class ReplayMeter(EnergyMeter):
    """Replays recorded Measurements: each `end_window(key)` returns the next one recorded for `key`.

    Args:
        records: (window key, Measurement) pairs in the order they were recorded.
        gpu_indices: GPUs the recording covered.
    """

    method = "replay"

    def __init__(self, records: Iterable[tuple[str, Measurement]], gpu_indices: Sequence[int] = (0,)) -> None:
        super().__init__(gpu_indices, sync=lambda: None)
        self._queue: dict[str, deque[Measurement]] = defaultdict(deque)
        for key, measurement in records:
            self._queue[key].append(measurement)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], gpu_indices: Sequence[int] = (0,)) -> ReplayMeter:
        """Build from dict rows with `window`, `time_s` and `energy_j` (None allowed)."""
        records = [(str(r["window"]), Measurement(float(r["time_s"]),
                                                  None if r.get("energy_j") is None else float(r["energy_j"])))
                   for r in rows]
        return cls(records, gpu_indices)

    @property
    def has_energy(self) -> bool:
        """Whether any recorded window carries energy."""
        return any(m.energy_j is not None for q in self._queue.values() for m in q)

    def end_window(self, key: str, sync: bool = True) -> Measurement:
        """The next recorded Measurement for `key` (ValueError when none is left or the key was not begun)."""
        if key not in self._open:
            raise ValueError(f"measurement window {key!r} was not begun (open: {sorted(self._open) or 'none'})")
        del self._open[key]
        if not self._queue.get(key):
            raise ValueError(f"replay has no recorded measurement left for window {key!r}")
        return self._queue[key].popleft()


class FakeRunner:
    """An IterationRunner whose steps cost what a cost function says, spent on a FakeTimeline.

    Args:
        timeline: advanced by each step (latency at power energy/latency per GPU).
        cost: shape -> (seconds, joules per GPU), e.g. `GPUProfile.cost`.
        kv_capacity_tokens: KV tokens the fake engine holds.
        uniform_only: reject mixed or non-uniform shapes with ValueError, as the HF engine does.
    """

    def __init__(self, timeline: FakeTimeline, cost: Callable[[IterationShape], tuple[float, float]],
                 kv_capacity_tokens: int = 400_000, uniform_only: bool = False) -> None:
        self.timeline, self.cost = timeline, cost
        self.kv_capacity_tokens = kv_capacity_tokens
        self.uniform_only = uniform_only
        self.shape: IterationShape | None = None
        self.steps = 0

    def prepare(self, shape: IterationShape) -> None:
        """Accept `shape` unless it is empty, too big for the KV cache, or non-uniform on a uniform-only runner."""
        kv = sum(n + b for n, b in shape.prefill) + sum(c + 1 for c in shape.decode)
        if shape.is_empty or kv > self.kv_capacity_tokens:
            raise ValueError(f"shape needs {kv} KV tokens; capacity {self.kv_capacity_tokens}")
        uniform = (not shape.decode and len(set(shape.prefill)) == 1 and shape.prefill[0][1] == 0) or (
            not shape.prefill and len(set(shape.decode)) == 1)
        if self.uniform_only and not uniform:
            raise ValueError("this engine runs only uniform prefill or decode batches")
        self.shape = shape

    def step(self) -> None:
        """Spend the shape's latency at its power."""
        if self.shape is None:
            raise ValueError("prepare() a shape before step()")
        time_s, energy_j = self.cost(self.shape)
        self.timeline.run(time_s, energy_j / time_s)
        self.steps += 1

    def release(self) -> None:
        """Forget the shape."""
        self.shape = None
