"""GPU check of the tick-aligned energy method: short aligned windows against one long window (needs CUDA+NVML).

For a bf16 matmul step of a few sizes, it prints the NVML counter's update period, then per size: energy per
step from ten tick-aligned windows of 0.25 s (median, spread, worst computed bound) and from one 20 s window
(counter difference, where quantization is < 1%), and their relative difference. The aligned figure should
agree with the long window within 2%.

    python3 tests/bench/bench_meter_gpu.py
"""

from __future__ import annotations

import statistics
import time

import torch

from tokenjoule.calibrate.measure.aligned import measure_aligned
from tokenjoule.calibrate.measure.meters import NVMLMeter, make_meter


def main() -> None:
    meter = make_meter([torch.cuda.current_device()])
    if not isinstance(meter, NVMLMeter):
        raise SystemExit(f"no NVML energy counter: {getattr(meter, 'reason', '?')}")
    print(f"GPU {torch.cuda.get_device_name()}, counter update period {meter.update_period_s * 1e3:.1f} ms")
    for n in (1024, 4096, 8192):
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)

        def step(a=a):
            for _ in range(4):
                a @ a
            torch.cuda.synchronize()

        for _ in range(50):
            step()
        aligned = [measure_aligned(meter, step, target_s=0.25) for _ in range(10)]
        per_step = [m.energy_per_step_j for m in aligned]
        meter.begin_window("long")
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 20.0:
            step()
            steps += 1
        long = meter.end_window("long")
        long_j = long.energy_j / steps
        med = statistics.median(per_step)
        print(f"n={n:5d}: step {aligned[0].step_time_s * 1e3:7.2f} ms, aligned {med:8.4f} J/step "
              f"(spread {(max(per_step) - min(per_step)) / med:.2%}, worst bound "
              f"{max(m.error_bound for m in aligned):.2%}), 20 s window {long_j:8.4f} J/step, "
              f"difference {(med - long_j) / long_j:+.2%}, power {long.power_w:.0f} W")
    meter.close()


if __name__ == "__main__":
    main()
