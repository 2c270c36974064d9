"""How long an H200 keeps drawing more than idle after its work stops: bursts of kernels with idle gaps between them.

Why: the simulator prices every moment the GPU has no iteration at the idle power (`GPUProfile.idle_power_w`). The
replays' instantaneous-power timelines read well above idle for tens of milliseconds after a scenario's last
iteration, and the dense models' light-load scenarios read low in energy. This measures the excess directly, with no
model in the way: a burst of back-to-back kernels (about `--burst-ms` of GPU work, then a CUDA synchronize), then the
host spins for a gap with the GPU idle, repeated for `--window-s` seconds per case, each case in its own NVML
energy-counter window:

- `gemm`: bf16 GEMMs at full power (compute-bound), `copy`: device-to-device copies (memory-bound);
- bursts of 5 and 30 ms; gaps 0 (bursts back to back) to 300 ms; idle windows before and after.

Per cycle (burst + gap), the energy beyond what the back-to-back case's power over the burst and the idle power over
the gap account for is the tail: `tail_j = E_cycle - P_busy x T_busy_cycle - P_idle x (T_cycle - T_busy_cycle)`, with
`P_busy` and `T_busy_cycle` from the same kernel and burst at gap 0. `tail_s` is it in seconds at the burst's excess
power (`tail_j / (P_busy - P_idle)`).

    python tests/bench/idle_tail_gpu.py --out "$OUT" [--window-s 3]
Writes `idle_tail.json` (rows and provenance).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from wait_power_gpu import kernel_time_s, write_result  # this folder (the script's own) is first on sys.path

from tokenjoule.calibrate.measure.meters import make_meter

BURSTS_MS = (5.0, 30.0)
GAPS_MS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def _cycles(fn, per_burst: int, gap_s: float, window_s: float) -> int:
    """Bursts of `per_burst` calls, each synchronized, then `gap_s` of host spinning; returns the cycles run."""
    n, stop = 0, time.perf_counter() + window_s
    while time.perf_counter() < stop:
        for _ in range(per_burst):
            fn()
        torch.cuda.synchronize()
        n += 1
        until = time.perf_counter() + gap_s
        while time.perf_counter() < until:
            pass
    return n


def _idle(meter, window_s: float) -> dict:
    time.sleep(0.5)
    meter.begin_window("idle")
    time.sleep(window_s)
    m = meter.end_window("idle")
    return {"case": "idle", "time_s": m.time_s, "energy_j": m.energy_j, "power_w": m.energy_j / m.time_s}


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window-s", type=float, default=3.0)
    args = parser.parse_args()
    meter = make_meter([0])
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(8192, 8192, device="cuda", dtype=torch.bfloat16)
    src = torch.empty(512 * 2**20, device="cuda", dtype=torch.uint8)  # 512 MiB, far beyond L2
    dst = torch.empty_like(src)

    def gemm():
        torch.mm(a, b, out=c)

    def copy():
        dst.copy_(src)

    kernels = {"gemm": gemm, "copy": copy}
    kernel_s = {name: kernel_time_s(fn, n=100, warmup=5) for name, fn in kernels.items()}
    print(f"kernel seconds per call: {kernel_s}", flush=True)
    rows = [_idle(meter, args.window_s)]
    for name, fn in kernels.items():
        for burst_ms in BURSTS_MS:
            per_burst = max(1, round(burst_ms * 1e-3 / kernel_s[name]))
            for gap_ms in GAPS_MS:
                _cycles(fn, per_burst, gap_ms * 1e-3, 0.3)  # settle at this pattern before the window opens
                meter.begin_window(name)
                n = _cycles(fn, per_burst, gap_ms * 1e-3, args.window_s)
                m = meter.end_window(name)
                rows.append({"case": name, "burst_ms": burst_ms, "gap_ms": gap_ms, "calls_per_burst": per_burst,
                             "cycles": n, "time_s": m.time_s, "energy_j": m.energy_j,
                             "power_w": m.energy_j / m.time_s})
                print(f"{name} burst {burst_ms:4.0f} ms gap {gap_ms:6.1f} ms: {n:5d} cycles, "
                      f"{m.energy_j / m.time_s:6.1f} W", flush=True)
    rows.append(_idle(meter, args.window_s))
    idle = min(r["power_w"] for r in rows if r["case"] == "idle")
    for r in rows:
        if r["case"] == "idle":
            continue
        base = next(x for x in rows if x["case"] == r["case"] and x.get("burst_ms") == r["burst_ms"]
                    and x["gap_ms"] == 0.0)
        t_cycle, t_busy = r["time_s"] / r["cycles"], base["time_s"] / base["cycles"]
        r["tail_j"] = r["energy_j"] / r["cycles"] - base["power_w"] * t_busy - idle * max(t_cycle - t_busy, 0.0)
        r["tail_s"] = r["tail_j"] / (base["power_w"] - idle)
        print(f"{r['case']} burst {r['burst_ms']:4.0f} gap {r['gap_ms']:6.1f} ms: tail {r['tail_j']:7.3f} J per cycle "
              f"= {r['tail_s'] * 1e3:6.2f} ms at the burst's excess power", flush=True)
    write_result(args.out / "idle_tail.json", meter, "tests/bench/idle_tail_gpu.py",
                 "bursts of back-to-back kernels (then CUDA synchronize), then the host spins for the gap with the GPU "
                 "idle; each case one NVML energy-counter window after 0.3 s of the same pattern; kernel GPU time by "
                 "CUDA events over 100 back-to-back calls; tail per cycle against the gap-0 case's power and cycle "
                 "time and the idle windows' power",
                 window_s=args.window_s, kernel_s=kernel_s, idle_power_w=idle, rows=rows)


if __name__ == "__main__":
    main()
