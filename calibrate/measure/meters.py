"""Energy meters with a begin/end window API: NVML's cumulative energy counter, or time only when NVML is absent.

    meter = make_meter([0])
    meter.begin_window("decode_bs32")
    ...  # the workload
    m = meter.end_window("decode_bs32")   # m.time_s, m.energy_j (None without NVML), m.per_gpu_energy_j

Both ends synchronize CUDA (when torch and a GPU are present) so the window covers the GPU work. NVML's counter
(`nvmlDeviceGetTotalEnergyConsumption`, mJ) is converted to joules here and nowhere else. It advances in steps
(about every 100 ms on H100), so a plain window is only good to about one step's energy at each edge; for
per-point errors under 2% use `tokenjoule.calibrate.measure.aligned.measure_aligned`, which reads the counter's tick log
(`start_ticks` / `ticks` / `stop_ticks`). Without NVML a meter measures time and reports energy as None, with the
reason logged: it never invents energy. `FakeMeter` and `ReplayMeter` (in `fake.py`) share this API.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tokenjoule.calibrate.measure.nvml import MeterError, NVMLDevices

logger = logging.getLogger(__name__)

MJ_PER_J = 1000.0
MW_PER_W = 1000.0
CONTINUOUS_BELOW_S = 0.002  # a counter updating faster than this is read as continuous (no tick alignment)
SLOW_PERIOD_S = 1.0  # assumed when the period cannot be inferred (tick alignment still applies)
GIL_SWITCH_S = 1e-4  # interpreter switch interval while the tick recorder runs (see NVMLMeter.start_ticks)


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one window measured.

    Attributes:
        time_s: wall time between begin and end (both ends synchronized).
        energy_j: energy of all metered GPUs together, or None when the meter cannot read energy.
        per_gpu_energy_j: energy per GPU index, or None with `energy_j`.
    """

    time_s: float
    energy_j: float | None
    per_gpu_energy_j: dict[int, float] | None = None

    @property
    def power_w(self) -> float | None:
        """Average power over the window (None without energy or for a zero-length window)."""
        if self.energy_j is None or self.time_s <= 0:
            return None
        return self.energy_j / self.time_s


@dataclass(frozen=True, slots=True)
class Tick:
    """One observed step of a GPU's cumulative energy counter.

    Attributes:
        time_s: meter-clock time at which the new value was first seen.
        gpu: GPU index.
        energy_j: the counter's new value (cumulative, J).
        uncertainty_s: how long before `time_s` the step may have happened (time since the previous poll).
    """

    time_s: float
    gpu: int
    energy_j: float
    uncertainty_s: float


def mj_to_j(millijoules: float) -> float:
    """NVML energy (mJ) to joules; every mJ -> J conversion in tokenjoule goes through here."""
    return millijoules / MJ_PER_J


def mw_to_w(milliwatts: float) -> float:
    """NVML power (mW) to watts; every mW -> W conversion in tokenjoule goes through here."""
    return milliwatts / MW_PER_W


def _noop() -> None:
    return None


def cuda_synchronizer() -> Callable[[], None]:
    """`torch.cuda.synchronize` when torch is installed and sees a GPU, else a no-op (torch imported lazily)."""
    try:
        import torch
    except ImportError:
        return _noop
    return torch.cuda.synchronize if torch.cuda.is_available() else _noop


class EnergyMeter:
    """Window bookkeeping shared by every meter; subclasses say how to read the energy counters.

    Args:
        gpu_indices: GPUs whose energy is summed.
        clock: monotonic clock in seconds.
        sync: called at both ends of a window (CUDA synchronize by default).
    """

    method = "abstract"

    def __init__(self, gpu_indices: Sequence[int], clock: Callable[[], float] = time.perf_counter,
                 sync: Callable[[], None] | None = None) -> None:
        self.gpu_indices = tuple(int(i) for i in gpu_indices)
        self.clock = clock
        self.sync = sync if sync is not None else cuda_synchronizer()
        self._open: dict[str, tuple[float, dict[int, float] | None]] = {}

    # ---- what subclasses provide ---------------------------------------------------------------------------------
    @property
    def has_energy(self) -> bool:
        """Whether `end_window` reports energy."""
        return True

    def read_energy_j(self) -> dict[int, float] | None:
        """Cumulative energy per GPU (J), or None when unavailable."""
        return None

    @property
    def update_period_s(self) -> float | None:
        """How often the energy counter advances (None when unknown or not applicable)."""
        return None

    def start_ticks(self) -> None:
        """Begin recording counter ticks (see `ticks`)."""

    def ticks(self) -> list[Tick]:
        """Ticks seen since `start_ticks`, in time order (empty when the meter has no counter)."""
        return []

    def stop_ticks(self) -> list[Tick]:
        """Stop recording and return the ticks seen."""
        return self.ticks()

    def metadata(self) -> dict[str, Any]:
        """How this meter measures, for the profile's `method` block."""
        return {"energy": self.method, "update_period_s": self.update_period_s}

    def close(self) -> None:
        """Release resources (threads, NVML)."""

    # ---- windows -------------------------------------------------------------------------------------------------
    def begin_window(self, key: str, sync: bool = True) -> None:
        """Open a measurement window named `key` (a key already open raises ValueError)."""
        if key in self._open:
            raise ValueError(f"measurement window {key!r} is already open")
        if sync:
            self.sync()
        self._open[key] = (self.clock(), self.read_energy_j())

    def end_window(self, key: str, sync: bool = True) -> Measurement:
        """Close window `key` (unknown keys raise ValueError) and return its Measurement."""
        if key not in self._open:
            raise ValueError(f"measurement window {key!r} was not begun (open: {sorted(self._open) or 'none'})")
        if sync:
            self.sync()
        t_end, e_end = self.clock(), self.read_energy_j()
        t_begin, e_begin = self._open.pop(key)
        time_s = t_end - t_begin
        period = self.update_period_s
        if e_begin is None or e_end is None:
            return Measurement(time_s, None, None)
        if period is not None and time_s < period:
            warnings.warn(f"window {key!r} lasted {time_s * 1e3:.1f} ms, shorter than the energy counter's update "
                          f"period ({period * 1e3:.0f} ms): its energy is mostly quantization. Repeat the work to "
                          f"fill >= {50 * period:.0f} s, or use calibrate.aligned.measure_aligned", stacklevel=2)
        per_gpu = {i: e_end[i] - e_begin[i] for i in self.gpu_indices}
        if any(v < 0 for v in per_gpu.values()):
            warnings.warn(f"window {key!r}: energy counter went backwards {per_gpu}; driver reset?", stacklevel=2)
        return Measurement(time_s, sum(per_gpu.values()), per_gpu)

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TimeOnlyMeter(EnergyMeter):
    """Measures time only; energy is None. Used when NVML is unavailable (the reason is logged once)."""

    method = "none"

    def __init__(self, gpu_indices: Sequence[int], reason: str, **kwargs: Any) -> None:
        super().__init__(gpu_indices, **kwargs)
        self.reason = reason
        logger.warning("energy will not be measured (time only): %s", reason)

    @property
    def has_energy(self) -> bool:
        """Always False."""
        return False

    def metadata(self) -> dict[str, Any]:
        """Method block, with why energy is missing."""
        return {"energy": self.method, "reason": self.reason, "update_period_s": None}


def infer_update_period_s(read: Callable[[], float], clock: Callable[[], float] = time.perf_counter,
                          changes: int = 6, timeout_s: float = 2.0, poll_s: float = 2e-4) -> float | None:
    """Median time between changes of a polled counter (None if it changed fewer than 3 times in `timeout_s`).

    Zeus infers NVML's power-counter period the same way (`zeus/monitor/power.py`). The counter must be moving:
    on an idle GPU the energy counter still advances, since idle power is > 0.
    """
    seen: list[float] = []
    last = read()
    start = clock()
    while len(seen) < changes and clock() - start < timeout_s:
        value = read()
        if value != last:
            seen.append(clock())
            last = value
        time.sleep(poll_s)
    if len(seen) < 3:
        return None
    return statistics.median(b - a for a, b in zip(seen, seen[1:], strict=False))


class NVMLMeter(EnergyMeter):
    """NVML total-energy-counter meter for some GPUs.

    Args:
        devices: the NVML doorway for the GPUs to meter.
        poll_s: polling interval of the tick recorder near an expected tick.
        **kwargs: passed to EnergyMeter (clock, sync).
    """

    method = "nvml-total-energy"

    def __init__(self, devices: NVMLDevices, poll_s: float = 5e-4, **kwargs: Any) -> None:
        super().__init__(devices.gpu_indices, **kwargs)
        self.devices = devices
        self.poll_s = poll_s
        self._period_s: float | None = None
        self._period_known = False
        self._recorder: _TickRecorder | None = None
        self._saved_switch_s = sys.getswitchinterval()
        devices.total_energy_mj_all()  # fail now, not mid-sweep, if the counter is unsupported

    def read_energy_j(self) -> dict[int, float]:
        """Cumulative energy per GPU, converted from NVML's mJ."""
        return {i: mj_to_j(mj) for i, mj in self.devices.total_energy_mj_all().items()}

    @property
    def update_period_s(self) -> float | None:
        """Counter update period, inferred once on first use (up to ~2 s); None for a continuous counter."""
        if not self._period_known:
            first = self.gpu_indices[0]
            period = infer_update_period_s(lambda: self.devices.total_energy_mj(first), self.clock)
            self._period_known = True
            logger.info("NVML energy counter update period: %s s", period)
            if period is None:
                logger.warning("energy counter barely moved in 2 s; assuming a %.1f s update period", SLOW_PERIOD_S)
                period = SLOW_PERIOD_S
            elif period < CONTINUOUS_BELOW_S:
                logger.info("energy counter updates every read: windows use it directly, no tick alignment")
                period = None
            self._period_s = period
        return self._period_s

    def start_ticks(self) -> None:
        """Start the background thread that timestamps every counter step.

        While it runs, the interpreter's GIL switch interval is lowered to `GIL_SWITCH_S`: a host-bound engine
        thread otherwise keeps the recorder waiting up to 5 ms (Python's default) per poll, which would widen
        each tick's timing uncertainty tenfold. The recorder sleeps between expected ticks, so the engine thread
        is only interrupted during the few ms around each tick.
        """
        if self._recorder is not None:
            raise ValueError("tick recording already running")
        self._saved_switch_s = sys.getswitchinterval()
        sys.setswitchinterval(min(self._saved_switch_s, GIL_SWITCH_S))
        self._recorder = _TickRecorder(self, self.update_period_s)
        self._recorder.start()

    def ticks(self) -> list[Tick]:
        """Ticks recorded so far."""
        return self._recorder.snapshot() if self._recorder is not None else []

    def stop_ticks(self) -> list[Tick]:
        """Stop the recorder thread and return its ticks."""
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return []
        recorder.stop()
        sys.setswitchinterval(self._saved_switch_s)
        return recorder.snapshot()

    def metadata(self) -> dict[str, Any]:
        """Method block: the counter, its period, the tick-recorder's polling interval."""
        return {"energy": self.method, "call": "nvmlDeviceGetTotalEnergyConsumption",
                "update_period_s": self.update_period_s, "tick_poll_s": self.poll_s}

    def close(self) -> None:
        """Stop the recorder and shut NVML down."""
        self.stop_ticks()
        try:
            self.devices.shutdown()
        except MeterError as err:
            logger.info("NVML shutdown failed: %s", err)


class _TickRecorder(threading.Thread):
    """Polls the energy counters and timestamps each step; sleeps between expected ticks to stay off the GIL."""

    GUARD_S = 0.004  # start dense polling at least this long (or 10% of a period) before the next tick is due

    def __init__(self, meter: NVMLMeter, period_s: float | None) -> None:
        super().__init__(name="tokenjoule-tick-recorder", daemon=True)
        self.meter, self.period_s = meter, period_s
        self._ticks: list[Tick] = []
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def run(self) -> None:
        # A step first seen by the read of poll k happened after poll k-1's read began and before poll k's read
        # ended: Tick.time_s is that end, Tick.uncertainty_s the span back to that beginning.
        clock, poll_s = self.meter.clock, self.meter.poll_s
        prev_before = clock()
        last = self.meter.devices.total_energy_mj_all()
        last_tick: dict[int, float] = {}
        while not self._stop_event.is_set():
            before = clock()
            values = self.meter.devices.total_energy_mj_all()
            after = clock()
            for gpu, mj in values.items():
                if mj != last[gpu]:
                    with self._lock:
                        self._ticks.append(Tick(after, gpu, mj_to_j(mj), after - prev_before))
                    last_tick[gpu] = after
            last, prev_before = values, before
            self._stop_event.wait(self._sleep_s(after, last_tick, poll_s))

    def _sleep_s(self, now: float, last_tick: dict[int, float], poll_s: float) -> float:
        if self.period_s is None or len(last_tick) < len(self.meter.gpu_indices):
            return poll_s
        due = min(last_tick.values()) + self.period_s - max(self.GUARD_S, 0.1 * self.period_s)
        return max(poll_s, due - now)

    def snapshot(self) -> list[Tick]:
        with self._lock:
            return list(self._ticks)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=1.0)


def make_meter(gpu_indices: Sequence[int], nvml: Any | None = None, **kwargs: Any) -> EnergyMeter:
    """An NVML meter if NVML initialises and the GPUs expose the energy counter, else a time-only meter.

    Args:
        gpu_indices: GPUs to meter (energy is summed over them).
        nvml: a pynvml stand-in (tests); imported when None.
        **kwargs: passed to the meter (clock, sync, poll_s).

    Returns:
        An EnergyMeter. A time-only meter logs why it cannot measure energy and reports `energy_j=None`.
    """
    try:
        devices = NVMLDevices(gpu_indices, nvml=nvml)
    except MeterError as err:
        return TimeOnlyMeter(gpu_indices, reason=str(err), **{k: v for k, v in kwargs.items() if k != "poll_s"})
    try:
        return NVMLMeter(devices, **kwargs)
    except MeterError as err:
        with contextlib.suppress(MeterError):
            devices.shutdown()
        return TimeOnlyMeter(gpu_indices, reason=str(err), **{k: v for k, v in kwargs.items() if k != "poll_s"})
