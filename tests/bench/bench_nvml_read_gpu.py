"""GPU check: how long NVML reads take on this host, and how precisely a 0.5 ms poller times an energy-counter tick.

Why: the tick-aligned meter's per-point bound is (u1 + u2) / (2 tick span), with u the time from the start of the
read before a tick to the end of the read that saw it. `calibrate/measure/aligned.py` assumed u ~ 0.6 ms; this prints
what it is here. Needs NVML (pynvml), not torch.

    python3 tests/bench/bench_nvml_read_gpu.py

2026-12-02, H200 GPU-221d464e (driver 580.159.04), output in
`calibrate/profiles/checks/h200_nvml_read_latency_2026-12-02.txt`: the energy read took 2.97 ms median (p90
5.67 ms, max 16.5 ms), power and temperature reads 2 us; idle ticks were timed to 7.7 ms (median).
"""

from __future__ import annotations

import statistics
import time

import pynvml


def read_times_s(read, n: int = 300) -> list[float]:
    """Sorted wall times of `n` calls of `read`."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        read()
        out.append(time.perf_counter() - t)
    return sorted(out)


def tick_uncertainties_s(handle, seconds: float = 3.0, poll_s: float = 5e-4) -> list[float]:
    """Per counter tick seen while polling every `poll_s`: end of the read that saw it - start of the read before."""
    last = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    prev_before, out = time.perf_counter(), []
    t_end = prev_before + seconds
    while time.perf_counter() < t_end:
        before = time.perf_counter()
        value = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        after = time.perf_counter()
        if value != last:
            out.append(after - prev_before)
        last, prev_before = value, before
        time.sleep(poll_s)
    return sorted(out)


def main() -> None:
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    print("GPU", pynvml.nvmlDeviceGetName(h), "driver", pynvml.nvmlSystemGetDriverVersion())
    for name, read in (("total_energy", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(h)),
                       ("power_usage", lambda: pynvml.nvmlDeviceGetPowerUsage(h)),
                       ("temperature", lambda: pynvml.nvmlDeviceGetTemperature(h, 0))):
        ts = read_times_s(read)
        print(f"{name:14s} read ms: median {1e3 * statistics.median(ts):.3f} p90 {1e3 * ts[int(0.9 * len(ts))]:.3f} "
              f"max {1e3 * ts[-1]:.3f}")
    unc = tick_uncertainties_s(h)
    print(f"ticks in 3 s: {len(unc)}, uncertainty ms median {1e3 * statistics.median(unc):.3f} max {1e3 * unc[-1]:.3f}")
    pynvml.nvmlShutdown()


if __name__ == "__main__":
    main()
