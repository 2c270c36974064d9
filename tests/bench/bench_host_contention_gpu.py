"""GPU check: does the meter's own machinery slow a launch-bound engine? (needs CUDA + NVML)

Why: eager and HF `generate()` steps measured during calibration ran slower than the same steps in serving, in
states lasting seconds (HF decode steps at 22, 60 or 100 ms). Calibration windows run the tick recorder (a
thread polling NVML, with the interpreter's GIL switch interval lowered to 0.1 ms); serving windows do not. This
script times the same launch-bound decode step under each piece of that machinery alone, interleaved in rounds so
that a slow host phase hits every condition alike (each round in a fresh random order, seeded):

- plain: nothing running beside the engine;
- sampler: the 100 ms power/temperature/clock sampler thread (runs during replays);
- switch: only the GIL switch interval lowered to `GIL_SWITCH_S`;
- recorder: `NVMLMeter.start_ticks()` as calibration runs it (recorder thread + lowered switch interval);
- recorder_default_switch: the recorder thread with Python's default switch interval;
- poll_process: NVML's energy counter polled every 0.5 ms from another process (no GIL shared).

Per condition and round it records every step's time and the main thread's run-queue wait and context switches
(`/proc/thread-self/schedstat`, `getrusage`), and the host's steal time (`/proc/stat`), and prints per condition
the median over rounds of its step-time median over the round's mean (1.0: no effect). Writes one JSON file.

    python3 tests/bench/bench_host_contention_gpu.py --out DIR [--seconds 4] [--rounds 6]

2026-12-02 (GPU-441054cd, 3 rounds in fixed alternating order): no condition was consistently slowest for HF;
for the tokenjoule eager step the three conditions that read the energy counter during the run were slower than
the other three in every round (round means +10% to +28%), while `plain` alone ranged 15.8-22.7 ms between rounds.
Suggestive, not conclusive: hence the shuffled order and more rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tokenjoule.calibrate.measure.machine import gpu_info, host_info, software_info
from tokenjoule.calibrate.measure.meters import GIL_SWITCH_S, NVMLMeter, make_meter
from tokenjoule.calibrate.measure.sampler import PowerSampler
from tokenjoule.calibrate.validate.host_phases import summarize_check
from tokenjoule.kernels.iteration import build_runner
from tokenjoule.kernels.shape import IterationShape
from tokenjoule.kernels.spec import ModelSpec
from tokenjoule.traces.files import write_atomic

POLLER = """
import sys, time, pynvml
pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(int(sys.argv[1]))
while True:
    pynvml.nvmlDeviceGetTotalEnergyConsumption(h); time.sleep(0.0005)
"""


def _steal_ticks() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8])


def _thread_wait_ns() -> tuple[int, int]:
    try:
        with open("/proc/thread-self/schedstat") as f:
            run_ns, wait_ns, _ = (int(v) for v in f.read().split())
        return run_ns, wait_ns
    except OSError:
        return 0, 0


class Condition:
    """Starts and stops one piece of the meter's machinery around a timed run."""

    def __init__(self, name: str, start: Callable[[], Any], stop: Callable[[Any], None]) -> None:
        self.name, self.start, self.stop = name, start, stop


def conditions(meter: NVMLMeter, gpu: int) -> list[Condition]:
    default = sys.getswitchinterval()

    def recorder_default() -> None:
        meter.start_ticks()
        sys.setswitchinterval(default)

    def sampler() -> PowerSampler:
        return PowerSampler(meter.devices, interval_s=0.1, clock=meter.clock).start()

    def poller() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", POLLER, str(gpu)])
        time.sleep(1.0)  # NVML init in the child
        return proc

    return [
        Condition("plain", lambda: None, lambda _: None),
        Condition("sampler", sampler, lambda s: s.stop()),
        Condition("switch", lambda: sys.setswitchinterval(GIL_SWITCH_S), lambda _: sys.setswitchinterval(default)),
        Condition("recorder", meter.start_ticks, lambda _: meter.stop_ticks()),
        Condition("recorder_default_switch", recorder_default, lambda _: meter.stop_ticks()),
        Condition("poll_process", poller, lambda p: (p.kill(), p.wait())),
    ]


def timed_run(step: Callable[[], None], seconds: float) -> dict[str, Any]:
    """Steps back to back for `seconds`; every step's time and the host's scheduling counters over the run."""
    ru0, steal0, (run0, wait0) = resource.getrusage(resource.RUSAGE_SELF), _steal_ticks(), _thread_wait_ns()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while (t := time.perf_counter()) < t_end:
        step()
        times.append(time.perf_counter() - t)
    ru1, steal1, (run1, wait1) = resource.getrusage(resource.RUSAGE_SELF), _steal_ticks(), _thread_wait_ns()
    return {"steps": len(times), "median_ms": 1e3 * statistics.median(times),
            "p10_ms": 1e3 * sorted(times)[len(times) // 10], "p90_ms": 1e3 * sorted(times)[9 * len(times) // 10],
            "step_ms": [round(1e3 * t, 3) for t in times],
            "main_thread_run_s": (run1 - run0) / 1e9, "main_thread_runqueue_wait_s": (wait1 - wait0) / 1e9,
            "involuntary_switches": ru1.ru_nivcsw - ru0.ru_nivcsw, "voluntary_switches": ru1.ru_nvcsw - ru0.ru_nvcsw,
            "process_cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "steal_ticks": steal1 - steal0, "clock_ticks_per_s": os.sysconf("SC_CLK_TCK")}


def engines(spec: ModelSpec) -> dict[str, Callable[[], None]]:
    """Launch-bound decode steps: the tokenjoule engine in eager mode (8 x 512) and HF (4 x 1024)."""
    out = {}
    # HF's KV budget is counted on the whole card, after what the first engine holds
    for engine, shape, utilization in (("tokenjoule-eager", IterationShape(decode=(512,) * 8), 0.35),
                                       ("hf-eager", IterationShape(decode=(1024,) * 4), 0.9)):
        name = engine.split("-")[0]
        t0 = time.perf_counter()
        runner = build_runner(spec, engine=name, mode="eager", gpu_memory_utilization=utilization)
        runner.prepare(shape)
        for _ in range(20):
            runner.step()
        print(f"{engine}: built and warmed in {time.perf_counter() - t0:.0f} s", flush=True)
        out[engine] = runner.step
    return out


def print_effects(doc: dict[str, Any]) -> None:
    """Per engine and condition: the median over rounds of (its median step / the round's mean of medians), as the
    validation report summarizes the committed file (`host_phases.summarize_check`)."""
    for engine, e in summarize_check(doc)["engines"].items():
        for cond, ratio in e["over_round_mean"].items():
            print(f"{engine:16s} {cond:24s} x{ratio:.3f} of the round mean", flush=True)
        readers = " ".join("-" if v is None else f"x{v:.2f}" for v in e["counter_readers_over_rest_by_round"])
        print(f"{engine:16s} counter readers over the rest, by round: {readers}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="llama-3.1-8b")
    args = ap.parse_args()
    gpu = torch.cuda.current_device()
    meter = make_meter([gpu])
    if not isinstance(meter, NVMLMeter):
        raise SystemExit(f"no NVML energy counter: {getattr(meter, 'reason', '?')}")
    steps = engines(ModelSpec.from_name(args.model))
    conds = conditions(meter, gpu)
    runs = []
    rng = random.Random(args.seed)
    for r in range(args.rounds):
        for engine, step in steps.items():
            for c in rng.sample(conds, len(conds)):
                handle = c.start()
                try:
                    res = timed_run(step, args.seconds)
                finally:
                    c.stop(handle)
                runs.append({"round": r, "engine": engine, "condition": c.name, **res})
                print(f"round {r} {engine:16s} {c.name:24s} median {res['median_ms']:7.2f} ms p90 "
                      f"{res['p90_ms']:7.2f} ms  runq wait {res['main_thread_runqueue_wait_s']:.3f} s  "
                      f"invol {res['involuntary_switches']}  steal {res['steal_ticks']}", flush=True)
    doc = {"kind": "tokenjoule-host-contention-check", "seed": args.seed, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "gpu": gpu_info(meter), "host": host_info(), "software": software_info(),
           "gil_switch_s_default": sys.getswitchinterval(), "gil_switch_s_lowered": GIL_SWITCH_S,
           "seconds_per_run": args.seconds, "runs": runs}
    meter.close()
    print_effects(doc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "host_contention.json", lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1)))


if __name__ == "__main__":
    main()
