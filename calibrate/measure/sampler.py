"""Background sampling of instantaneous power, temperature and SM clock, for timelines and thermal settling."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenjoule.calibrate.measure.meters import mw_to_w
from tokenjoule.calibrate.measure.nvml import MeterError, NVMLDevices

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One reading of one GPU.

    Attributes:
        time_s: sampler-clock time of the reading.
        gpu: GPU index.
        power_w: instantaneous board power (NVML_FI_DEV_POWER_INSTANT, else nvmlDeviceGetPowerUsage).
        temperature_c: die temperature (None if unsupported).
        sm_clock_mhz: SM clock (None if unsupported).
    """

    time_s: float
    gpu: int
    power_w: float
    temperature_c: float | None
    sm_clock_mhz: float | None

    def to_row(self) -> dict[str, Any]:
        """Tidy row for a table."""
        return {"time_s": self.time_s, "gpu": self.gpu, "power_w": self.power_w,
                "temperature_c": self.temperature_c, "sm_clock_mhz": self.sm_clock_mhz}


class PowerSampler:
    """Samples every GPU of an NVMLDevices at a fixed interval in a daemon thread.

    Use as a context manager, or `start()` / `stop()`; `samples()` returns what was read so far.

    Args:
        devices: the NVML doorway.
        interval_s: time between samples.
        clock: clock for the timestamps (the meter's clock, so timelines line up with windows).
    """

    def __init__(self, devices: NVMLDevices, interval_s: float = 0.05,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s={interval_s} must be > 0")
        self.devices, self.interval_s, self.clock = devices, interval_s, clock
        self._samples: list[PowerSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_once(self) -> list[PowerSample]:
        """Read every GPU now (MeterError if power cannot be read)."""
        now = self.clock()
        return [PowerSample(now, gpu, mw_to_w(self.devices.power_instant_mw(gpu)),
                            self._optional(self.devices.temperature_c, gpu),
                            self._optional(self.devices.sm_clock_mhz, gpu))
                for gpu in self.devices.gpu_indices]

    @staticmethod
    def _optional(read: Callable[[int], int], gpu: int) -> float | None:
        try:
            return float(read(gpu))
        except MeterError:
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.read_once()
            except MeterError as err:
                logger.warning("power sampling stopped: %s", err)
                return
            with self._lock:
                self._samples.extend(batch)
            self._stop.wait(self.interval_s)

    def start(self) -> PowerSampler:
        """Start the sampling thread."""
        if self._thread is not None:
            raise ValueError("sampler already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tokenjoule-power-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[PowerSample]:
        """Stop sampling and return all samples."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2.0)
            self._thread = None
        return self.samples()

    def samples(self) -> list[PowerSample]:
        """Samples so far, in time order."""
        with self._lock:
            return list(self._samples)

    def __enter__(self) -> PowerSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_thermal_settled(read_temperature_c: Callable[[], float], load: Callable[[], None], window_s: float = 5.0,
                         tolerance_c: float = 1.0, max_s: float = 30.0,
                         clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """Run `load` until the temperature changes by less than `tolerance_c` over `window_s` (or `max_s` passes).

    Args:
        read_temperature_c: returns the current temperature.
        load: one unit of work (e.g. a large prefill step), called repeatedly.
        window_s: comparison window.
        tolerance_c: settled when the change over the window is at most this.
        max_s: give up after this long.
        clock: clock in seconds.

    Returns:
        (seconds spent, final temperature in C).
    """
    start = clock()
    history: list[tuple[float, float]] = [(start, read_temperature_c())]
    while clock() - start < max_s:
        load()
        now, temp = clock(), read_temperature_c()
        history.append((now, temp))
        old = [t for (ts, t) in history if ts <= now - window_s]
        if old and abs(temp - old[-1]) <= tolerance_c:
            break
    return clock() - start, history[-1][1]
