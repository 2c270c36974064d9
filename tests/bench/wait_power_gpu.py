"""What an H200 draws while it waits on the host between kernels: power of sparse kernel streams.

Why: composed eager iterations price the time a host-bound GPU waits for launches at one fitted waiting power
(`IterationOverheads.host_wait_power_w`), which the fit clips to the idle power on every lease so far; yet the dense
7-8B models' host-bound quick-grid prefills (128 tokens, ~20 ms) draw 280-340 W and the dense models' mixed iterations
read 2-21% low in energy (README, issue 16). This measures the waiting power directly, with no model in the way: one
kernel launched from Python, then the host spins for a fixed gap before the next, for `--window-s` seconds per case,
each case in its own NVML energy-counter window:

- `tiny`: a one-element add (a few us of GPU work), gaps 0-1000 us;
- `gemm`: a bf16 GEMM of about 0.1-0.2 ms at full power, gaps 0-2000 us;
- `idle`: no kernel at all (the host spins).

Prints and writes, per case: kernels launched, duty (GPU time of the kernels / window), power, and the power beyond
idle per unit of duty.

    python tests/bench/wait_power_gpu.py --out "$OUT" [--window-s 3]
Writes `wait_power.json` (rows and provenance).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from tokenjoule.calibrate.measure.machine import gpu_info, host_info, software_info
from tokenjoule.calibrate.measure.meters import make_meter

TINY_GAPS_US = (0, 10, 20, 40, 80, 160, 320, 1000)
GEMM_GAPS_US = (0, 50, 200, 500, 2000)


def kernel_time_s(fn, n: int = 200, warmup: int = 10) -> float:
    """GPU seconds per call of `fn` (CUDA events around n back-to-back calls, after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / n


def _stream(fn, gap_s: float, window_s: float) -> int:
    """Launch `fn`, spin the host for `gap_s`, repeat until `window_s` has passed; returns the launches."""
    n, stop = 0, time.perf_counter() + window_s
    while True:
        t = time.perf_counter()
        if t >= stop:
            return n
        if fn is not None:
            fn()
            n += 1
        until = t + gap_s
        while time.perf_counter() < until:
            pass


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--window-s", type=float, default=3.0)
    args = parser.parse_args()
    meter = make_meter([0])
    one = torch.zeros(1, device="cuda")
    a = torch.randn(8192, 2048, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(2048, 8192, device="cuda", dtype=torch.bfloat16)
    c = torch.empty(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def tiny():
        one.add_(1.0)

    def gemm():
        torch.mm(a, b, out=c)

    kernel_s = {"tiny": kernel_time_s(tiny), "gemm": kernel_time_s(gemm), "idle": 0.0}
    print(f"kernel seconds per call: {kernel_s}", flush=True)
    cases = ([("idle", None, 0)] + [("tiny", tiny, g) for g in TINY_GAPS_US] + [("gemm", gemm, g) for g in GEMM_GAPS_US]
             + [("idle", None, 0)])
    rows = []
    for name, fn, gap_us in cases:
        _stream(fn, gap_us * 1e-6, 0.3)  # settle at this pattern before the window opens
        torch.cuda.synchronize()
        meter.begin_window(name)
        n = _stream(fn, gap_us * 1e-6, args.window_s)
        m = meter.end_window(name)
        duty = n * kernel_s[name] / m.time_s
        rows.append({"case": name, "gap_us": gap_us, "launches": n, "time_s": m.time_s, "energy_j": m.energy_j,
                     "power_w": m.energy_j / m.time_s, "duty": duty})
        print(f"{name:5s} gap {gap_us:5d} us: {n:7d} launches, duty {duty:6.1%}, {m.energy_j / m.time_s:6.1f} W",
              flush=True)
    idle = min(r["power_w"] for r in rows if r["case"] == "idle")
    for r in rows:
        r["excess_w_per_duty"] = (r["power_w"] - idle) / r["duty"] if r["duty"] > 0 else None
    write_result(args.out / "wait_power.json", meter, "tests/bench/wait_power_gpu.py",
                 "one kernel launched from Python, then the host spins for the gap; each case one NVML energy-counter "
                 "window (begin/end with CUDA sync) after 0.3 s of the same pattern; kernel GPU time by CUDA events "
                 "over 200 back-to-back calls; duty = launches x kernel time / window",
                 window_s=args.window_s, kernel_s=kernel_s, idle_power_w=idle, rows=rows)


def write_result(path: Path, meter, script: str, method: str, **fields) -> None:
    """The measurement as JSON with its provenance (date, GPU, host, software, script, method) before `fields`."""
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "gpu": gpu_info(meter), "host": host_info(), "software": software_info(), "method": method,
           "script": script, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
