"""Scale-out: a 1,000-cell `compare` grid and a large `project`, serial against local workers (and Ray).

Each case runs `tokenjoule` in a fresh subprocess, one after another: serially (`--jobs 1`), on `--jobs N` local
worker processes and, with --ray, as Ray tasks on a new local Ray instance (`--ray auto`; its start-up, seconds, is
in the wall time). It prints wall time, speed-up over the serial run, throughput per worker and CPU seconds (the
command and the processes it waited for: its worker processes, but not Ray's, which the command does not reap; the
load average says how busy the machine was), and checks that
every run's JSON equals the serial run's (compare: exactly; project: floats to 1e-9, the shards' sums are added in
another order).

- compare: 3 policies x 5 engines (the shipped H100/H200 Llama-3.1-8B profiles) x 2 TP degrees x 34 replica counts
  = 1,020 cells, each replaying the same 2,000-request synthetic trace (20 req/s Poisson arrivals).
- project: the trace of `bench_project_speed.py` (a week, a daily cycle, Azure conv lengths; Parquet in 1M-row row
  groups), written chunk by chunk to a temp dir (never whole in memory) and deleted afterwards; all three
  estimators; the synthetic toy profile with replicas scaled to the load (32 per 10^8 requests).

Run: python3 tests/bench/bench_scale_out.py [--jobs 2] [--cells 1020] [--requests 100000000] [--ray] [--dir /tmp]
     (--cells 0 or --requests 0 skips that case)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_project_speed import TOY, write_trace

ENGINES = ("h100-llama-3.1-8b-tokenjoule-cudagraph", "h100-llama-3.1-8b-tokenjoule-eager",
           "h100-llama-3.1-8b-hf-eager", "h200-llama-3.1-8b-tokenjoule-cudagraph",
           "h200-llama-3.1-8b-tokenjoule-eager")


def tokenjoule(*args: str) -> tuple[float, float, dict, int]:
    """Run the command in a fresh process: (wall seconds, CPU seconds, its JSON output, exit code).

    CPU is user + system of the command and every process it waited for (its worker processes, Ray's processes):
    on a machine shared with other work it shows what the run cost when its wall time does not.
    """
    cmd = [sys.executable, "-c", "import sys; from tokenjoule.cli import main; sys.exit(main())", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode not in (0, 1) or not done.stdout.strip():
        sys.exit(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return wall, cpu, json.loads(done.stdout), done.returncode


def close(a, b, rel: float) -> bool:
    """Equal JSON values, floats to `rel`."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


def backends(args: argparse.Namespace) -> list[tuple[str, list[str], int]]:
    """(name, flags, workers) per run; the serial run first."""
    runs = [("serial", [], 1), (f"--jobs {args.jobs}", ["--jobs", str(args.jobs)], args.jobs)]
    if args.ray:
        runs.append(("--ray auto (local, start-up included)", ["--ray", "auto"], args.jobs))
    return runs


def report(units: str, count: float, results: list[tuple[str, int, float, float, bool]]) -> None:
    """One line per run: wall, speed-up, throughput (all, per worker), CPU seconds, and the check."""
    serial = results[0][2]
    print(f"  load average (1 min, after the runs): {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, workers, wall, cpu, same in results:
        check = "same as serial" if same else "DIFFERENT"
        print(f"  {name:<38} {wall:7.1f} s wall  x{serial / wall:4.2f}  {count / wall:9,.2f} {units}/s, "
              f"{count / wall / workers:9,.2f} per worker  {cpu:7.1f} CPU-s  {check}", flush=True)


def bench_compare(args: argparse.Namespace, tmp: Path) -> None:
    replicas = list(range(1, args.cells // 30 + 1)) or [1]
    grid = tmp / "grid.toml"
    grid.write_text(f'synthetic = "n=2000,input=512,output=128,rate=20"\n[grid]\n'
                    f'policy = ["static", "continuous", "chunked"]\nprofile = {json.dumps(list(ENGINES))}\n'
                    f"tp = [1, 2]\nreplicas = {replicas}\n")
    cells = 3 * len(ENGINES) * 2 * len(replicas)
    print(f"compare: {cells:,} cells (3 policies x {len(ENGINES)} engines x 2 TP x {len(replicas)} replica counts), "
          "2,000 requests each", flush=True)
    results, first = [], None
    for name, flags, workers in backends(args):
        wall, cpu, data, rc = tokenjoule("compare", "--config", str(grid), "--json", *flags)
        first = first or data
        results.append((name, workers, wall, cpu, data == first and rc == 0))
    report("cells", cells, results)


def bench_project(args: argparse.Namespace, tmp: Path) -> None:
    path = tmp / "week.parquet"
    t0 = time.perf_counter()
    rows = write_trace(path, args.requests)
    print(f"project: {rows:,} requests, {path.stat().st_size / 1e9:.2f} GB Parquet, written in "
          f"{time.perf_counter() - t0:.0f} s; all three estimators", flush=True)
    replicas = str(max(1, round(32 * rows / 1e8)))
    results, first = [], None
    for name, flags, workers in backends(args):
        wall, cpu, data, _ = tokenjoule("project", str(path), "--profile", str(TOY), "--replicas", replicas,
                                        "--json", *flags)
        first = first or data
        results.append((name, workers, wall, cpu, close(data, first, 1e-9)))
        la = data["estimates"]["load_aware"]
        print(f"    {name}: load-aware {la['energy_j'] / 3.6e6:,.1f} kWh, {la['simulations']} simulations, "
              f"pads {la['pad_s']:.1f} s", flush=True)
    report("M requests", rows / 1e6, results)


def main() -> None:
    """Run the cases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="local worker processes (and Ray CPUs)")
    parser.add_argument("--cells", type=int, default=1020, help="about this many compare cells (multiple of 30)")
    parser.add_argument("--requests", type=int, default=100_000_000, help="requests in the projected trace")
    parser.add_argument("--ray", action="store_true", help="also run on a new local Ray instance (--ray auto)")
    parser.add_argument("--dir", default=None, help="where to write the temp trace (default: system temp)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tj-scale-out-", dir=args.dir))
    try:
        if args.cells:
            bench_compare(args, tmp)
        if args.requests:
            bench_project(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
