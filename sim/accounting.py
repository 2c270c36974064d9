"""Energy and request accounting: per-request slots, a binned busy-energy timeline, idle, host, PUE and carbon.

Following SimPy's monitoring guide, the simulation only appends numbers; tables and totals are built at the end.
Memory is bounded by the trace length (one slot per request) and the run's duration (one bin per `bin_s`), never by
the number of iterations.

Conservation: every busy joule is attributed to a request (by tokens processed in the iteration), and every idle
joule (idle power between iterations, per replica, until the end of the run) is unattributed, so
sum(request energy) + idle == GPU total.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tokenjoule.kernels.spec import ConfigError

if TYPE_CHECKING:
    from tokenjoule.sim.notes import RangeTally
    from tokenjoule.sim.replica import RequestState

# Intervals booked before the timeline adds them to its bins (x3 floats: bounded memory however long the run).
FILL_EVERY = 3 * (1 << 16)
# Bin widths that divide an hour, so no bin straddles two hours of an hourly carbon-intensity series.
_NICE_BINS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
STATUS_PENDING, STATUS_FINISHED, STATUS_REJECTED = 0, 1, 2


def pick_bin_s(span_s: float, max_bins: int = 2000) -> float:
    """The smallest nice bin width giving at most `max_bins` bins over `span_s` (an hour for longer spans)."""
    for width in _NICE_BINS_S:
        if span_s / width <= max_bins:
            return float(width)
    return 3600.0


class EnergyTimeline:
    """Busy seconds and joules per time bin, summed over replicas (an interval's energy is split by its time).

    The simulator books a few intervals per request, so `add` only records one; the bins are filled a block of
    intervals at a time (numpy, `fill`), in booking order, with the arithmetic of splitting and adding each interval
    in turn: every bin holds the sums it would hold had each interval been added on its own.
    """

    def __init__(self, bin_s: float) -> None:
        self.bin_s = bin_s
        # start_s, time_s, energy_j of each interval not yet in the bins: the simulator's replicas append to it in
        # place (`add`, written out) and call `fill` once it holds FILL_EVERY floats
        self.booked: list[float] = []
        self._busy_s = np.zeros(0)
        self._busy_j = np.zeros(0)

    @property
    def busy_s(self) -> np.ndarray:
        """Busy seconds per bin (over all replicas)."""
        self.fill()
        return self._busy_s

    @property
    def busy_j(self) -> np.ndarray:
        """Busy joules per bin (over all replicas)."""
        self.fill()
        return self._busy_j

    def add(self, start_s: float, time_s: float, energy_j: float) -> None:
        """Book `energy_j` spent uniformly over [start_s, start_s + time_s]."""
        booked = self.booked
        booked += start_s, time_s, energy_j
        if len(booked) >= FILL_EVERY:
            self.fill()

    def fill(self) -> None:
        """Add the booked intervals to their bins: one piece in its bin, or one per bin it overlaps (by time)."""
        if not self.booked:
            return
        start, time_s, energy_j = np.array(self.booked, dtype=np.float64).reshape(-1, 3).T
        width = self.bin_s
        first = np.floor_divide(start, width).astype(np.int64)  # Python's float // (numpy's floor_divide is its twin)
        last = np.floor_divide(start + time_s, width).astype(np.int64)
        whole = (first == last) | (time_s <= 0.0)
        pieces = np.where(whole, 1, last - first + 1)
        of = np.repeat(np.arange(len(start)), pieces)  # the interval of each piece, in booking order
        b = first[of] + np.arange(len(of)) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # the bin of each piece
        bins = b.astype(np.float64)
        overlap = np.minimum((start + time_s)[of], (bins + 1) * width) - np.maximum(start[of], bins * width)
        whole = whole[of]
        with np.errstate(divide="ignore", invalid="ignore"):
            piece_s = np.where(whole, time_s[of], overlap)
            piece_j = np.where(whole, energy_j[of], energy_j[of] * overlap / time_s[of])
        keep = whole | (overlap > 0.0)
        size = int(last.max()) + 1
        if size > len(self._busy_s):
            self._busy_s = np.concatenate((self._busy_s, np.zeros(size - len(self._busy_s))))
            self._busy_j = np.concatenate((self._busy_j, np.zeros(size - len(self._busy_j))))
        np.add.at(self._busy_s, b[keep], piece_s[keep])  # unbuffered: repeated bins add up in order
        np.add.at(self._busy_j, b[keep], piece_j[keep])
        self.booked.clear()  # the same list: the replicas hold it

    def gpu_power_w(self, end_s: float, replicas: int, idle_power_w: float) -> tuple[np.ndarray, np.ndarray]:
        """(bin start times, mean GPU power per bin) with idle power filling each replica's non-busy time."""
        n = max(1, math.ceil(end_s / self.bin_s))
        busy_s = np.zeros(n)
        busy_j = np.zeros(n)
        m = min(n, len(self.busy_s))
        busy_s[:m], busy_j[:m] = self.busy_s[:m], self.busy_j[:m]
        starts = np.arange(n) * self.bin_s
        span = np.clip(end_s - starts, 0.0, self.bin_s)
        idle_j = idle_power_w * np.clip(span * replicas - busy_s, 0.0, None)
        return starts, (busy_j + idle_j) / np.where(span > 0, span, 1.0)


class Ledger:
    """One slot per trace row (filled when the request finishes or is rejected), plus the energy timeline.

    Attributes:
        n: number of requests.
        timeline: busy energy per time bin.
        range_tally: counts the iterations priced beyond the profile's measured range (None: no range to check).
    """

    def __init__(self, n: int, bin_s: float, range_tally: RangeTally | None = None) -> None:
        self.n = n
        self.timeline = EnergyTimeline(bin_s)
        self.range_tally = range_tally
        self.status = np.zeros(n, dtype=np.int8)
        self.replica = np.full(n, -1, dtype=np.int32)
        self.preemptions = np.zeros(n, dtype=np.int32)
        self.start_s = np.full(n, np.nan)
        self.first_token_s = np.full(n, np.nan)
        self.finish_s = np.full(n, np.nan)
        self.energy_j = np.zeros(n)
        self.reject_reason = np.full(n, "", dtype=object)
        self.last_arrival_s = 0.0
        # `finish` writes through memoryviews of the columns: a scalar write costs about half a numpy one
        self._finish_columns = tuple(memoryview(column) for column in (
            self.status, self.replica, self.preemptions, self.start_s, self.first_token_s, self.finish_s,
            self.energy_j))

    def finish(self, s: RequestState, now: float, replica: int) -> None:
        """Record a finished request."""
        i = s.idx
        status, replica_of, preemptions, start_s, first_token_s, finish_s, energy_j = self._finish_columns
        status[i] = STATUS_FINISHED
        replica_of[i] = replica
        preemptions[i] = s.preemptions
        start_s[i] = s.start_s
        first_token_s[i] = s.first_token_s
        finish_s[i] = now
        energy_j[i] = s.energy_j

    def reject(self, s: RequestState, reason: str) -> None:
        """Record a request that can never be served, with the reason."""
        self.status[s.idx] = STATUS_REJECTED
        self.reject_reason[s.idx] = reason


@dataclass(frozen=True, slots=True)
class EnergyBreakdown:
    """Energy of a run, by where it went (J), and its carbon.

    Attributes:
        gpu_busy_j: GPU energy of iterations (attributed to requests).
        gpu_idle_j: GPU idle power between iterations until the end of the run (unattributed).
        host_j: host (CPU, memory, fans) power over the run, if configured.
        facility_overhead_j: (PUE - 1) x (GPU + host): cooling and power delivery.
        total_j: everything above.
        carbon_kg: kg CO2e of `total_j` at the grid intensity (None when no intensity is given).
    """

    gpu_busy_j: float
    gpu_idle_j: float
    host_j: float
    facility_overhead_j: float
    total_j: float
    carbon_kg: float | None

    @property
    def gpu_j(self) -> float:
        """GPU energy, busy plus idle."""
        return self.gpu_busy_j + self.gpu_idle_j

    def to_dict(self) -> dict[str, float | None]:
        """The energy keys `simulate --json` and each `project --json` estimate share (kWh and kg CO2e of the total)."""
        return {"energy_total_j": self.total_j, "gpu_busy_j": self.gpu_busy_j, "gpu_idle_j": self.gpu_idle_j,
                "host_j": self.host_j, "facility_overhead_j": self.facility_overhead_j, "kwh": self.total_j / 3.6e6,
                "kg_co2e": self.carbon_kg}


def energy_breakdown(busy_j: float, idle_j: float, end_s: float, replicas: int, host_power_w: float, pue: float,
                     carbon_g_per_kwh: float | None = None, carbon_hourly: tuple[float, ...] | None = None,
                     timeline_w: tuple[np.ndarray, np.ndarray] | None = None) -> EnergyBreakdown:
    """Totals, with host power, PUE and carbon (constant g/kWh, or hourly g/kWh weighted by the power timeline).

    Args:
        busy_j: GPU busy energy (J).
        idle_j: GPU idle energy (J).
        end_s: run duration (s).
        replicas: number of replicas (host power is per replica).
        host_power_w: host power per replica (W).
        pue: power usage effectiveness (>= 1).
        carbon_g_per_kwh: constant grid intensity.
        carbon_hourly: intensity per hour from the run's start (repeats when the run is longer).
        timeline_w: (bin starts, GPU power per bin), to weight an hourly intensity.

    Returns:
        The breakdown.
    """
    host_j = host_power_w * replicas * end_s
    total = (busy_j + idle_j + host_j) * pue
    carbon = None
    if carbon_hourly:
        starts, power = timeline_w
        width = starts[1] - starts[0] if len(starts) > 1 else max(end_s, 1.0)
        span = np.clip(end_s - starts, 0.0, width)
        gpu_bin_j = power * span
        gpu_bin_j *= (busy_j + idle_j) / gpu_bin_j.sum() if gpu_bin_j.sum() > 0 else 0.0  # exact total
        bin_j = (gpu_bin_j + host_power_w * replicas * span) * pue
        hours = (starts // 3600).astype(int) % len(carbon_hourly)
        carbon = float(np.sum(bin_j / 3.6e6 * np.asarray(carbon_hourly)[hours]) / 1000.0)
    elif carbon_g_per_kwh is not None:
        carbon = total / 3.6e6 * carbon_g_per_kwh / 1000.0
    return EnergyBreakdown(busy_j, idle_j, host_j, total - (busy_j + idle_j + host_j), total, carbon)


# Header names (case-insensitive) a carbon CSV's intensity column may have, gCO2e per kWh; exactly one must be present.
CARBON_INTENSITY_COLUMNS = ("carbon_intensity_g_per_kwh", "carbon_intensity_gco2_per_kwh", "gco2_per_kwh",
                            "gco2e_per_kwh", "g_co2_per_kwh", "g_co2e_per_kwh", "carbon_intensity", "intensity")
# Header names of an optional time column holding ISO date-times (a zone offset, or none: read as UTC).
CARBON_TIME_COLUMNS = ("datetime", "timestamp", "time", "date", "datetime_utc", "timestamp_utc")


@dataclass(frozen=True, slots=True)
class CarbonHours:
    """An hourly grid-intensity series read from a CSV (`load_carbon_csv`).

    Attributes:
        values: gCO2e/kWh per hour, in file order.
        first_hour_unix_s: the wall-clock start of the first row (Unix seconds, UTC), or None when the file has no
            time column (its rows are then hours from the run's start).
        source: the file, for messages.
    """

    values: tuple[float, ...]
    first_hour_unix_s: float | None = None
    source: str = "<carbon>"

    def aligned(self, start_unix_s: float | None) -> tuple[float, ...]:
        """The series from the run's first hour on: hour k of the run is priced at the row holding start + k hours.

        Args:
            start_unix_s: the wall-clock time of the run's time 0 (a trace with date-time arrivals: its first
                arrival, plus any window start), or None for a relative-time trace: then, and for a file without a
                time column, the first row is the run's first hour.

        Returns:
            Intensities per hour from the run's start (the run repeats them when it outlasts them).

        Raises:
            ConfigError: the file's hours do not cover the run's start.
        """
        if self.first_hour_unix_s is None or start_unix_s is None:
            return self.values
        k = math.floor((start_unix_s - self.first_hour_unix_s) / 3600.0)
        if not 0 <= k < len(self.values):
            raise ConfigError(f"--carbon {self.source}: its {len(self.values)} hours from "
                              f"{_utc(self.first_hour_unix_s)} do not cover the trace's start {_utc(start_unix_s)}")
        return self.values[k:]


def _utc(unix_s: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _parse_time(text: str) -> float:
    import datetime

    stamp = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


def _column(header: list[str], names: tuple[str, ...], path: Path, what: str, required: bool) -> int | None:
    found = [i for i, h in enumerate(header) if h.strip().lower() in names]
    if len(found) > 1:
        raise ConfigError(f"{path}: several {what} columns ({', '.join(header[i] for i in found)}); keep one")
    if not found and required:
        raise ConfigError(f"{path}: no {what} column; headers found: {', '.join(header) or 'none'}; "
                          f"name it one of {', '.join(names)}")
    return found[0] if found else None


def load_carbon_csv(path: str | Path) -> CarbonHours:
    """Hourly grid intensity (gCO2e/kWh) from a CSV with a header, one row per hour.

    The intensity is the column named one of `CARBON_INTENSITY_COLUMNS` (other columns, e.g. a renewable share, are
    ignored). A column named one of `CARBON_TIME_COLUMNS` holding ISO date-times, consecutive hours, places the rows
    on the wall clock (see `CarbonHours.aligned`); without one, rows are hours from the run's start
    (e.g. `hour,g_co2_per_kwh`).

    Raises:
        ConfigError: unreadable file, no (or several) intensity columns, a bad value or time, no rows.
    """
    path = Path(path)
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read carbon CSV ({err.strerror or err})") from err
    header = rows[0] if rows else []
    col = _column(header, CARBON_INTENSITY_COLUMNS, path, "carbon intensity", required=True)
    time_col = _column(header, CARBON_TIME_COLUMNS, path, "time", required=False)
    values, times = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        cell = row[col] if col < len(row) else ""
        try:
            value = float(cell)
        except ValueError as err:
            raise ConfigError(f"{path}: row {line}: intensity {cell!r} is not a number") from err
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"{path}: row {line}: intensity {value} must be finite and >= 0")
        values.append(value)
        if time_col is not None:
            cell = row[time_col] if time_col < len(row) else ""
            try:
                times.append(_parse_time(cell))
            except ValueError as err:
                raise ConfigError(f"{path}: row {line}: {header[time_col]} {cell!r} is not an ISO date-time") from err
            if len(times) > 1 and times[-1] - times[-2] != 3600.0:
                raise ConfigError(f"{path}: row {line}: {header[time_col]} is not one hour after the row before "
                                  "(rows must be consecutive hours)")
    if not values:
        raise ConfigError(f"{path}: carbon CSV has no data rows (expected a header, then one row per hour)")
    return CarbonHours(tuple(values), times[0] if times else None, str(path))
