"""`tokenjoule project` (all three estimators) over a 100-million-request Parquet trace: wall time and peak memory.

Target on the 2-core dev machine: under 3 minutes, peak RSS under 2 GB.
The trace is a week of traffic (~165 req/s on average, a +-50% daily cycle: Poisson counts per minute, uniform
within the minute), with (input, output) pairs resampled from the bundled Azure conversation 2023 trace. It is
written in this process to a temp dir (1M-row row groups, ~1.2 GB) and deleted afterwards. The projection runs
as `tokenjoule project` in a fresh subprocess; peak RSS is that child's (resource.getrusage(RUSAGE_CHILDREN)).
Profile: the synthetic toy profile in tests/fixtures (numbers are only for timing); 32 replicas serve the load.

Run: python3 tests/bench/bench_project_speed.py [--requests 100000000] [--dir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenjoule.traces.loaders import load_trace

TOY = Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"
MINUTES_PER_CHUNK = 120
SPAN_MIN = 7 * 24 * 60


def write_trace(path: Path, requests: int, seed: int = 0) -> int:
    """Write the trace minute by minute in chunks; returns the rows written (about `requests`)."""
    rng = np.random.default_rng(seed)
    conv = load_trace("azure-conv-2023")
    pool_in, pool_out = conv.column("input_tokens"), conv.column("output_tokens")
    minutes = np.arange(SPAN_MIN)
    shape = 1.0 + 0.5 * np.sin(2 * np.pi * minutes / 1440.0)
    per_min = requests * shape / shape.sum()
    schema = pa.schema([("arrival_s", pa.float64()), ("input_tokens", pa.int32()), ("output_tokens", pa.int32())])
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for m0 in range(0, SPAN_MIN, MINUTES_PER_CHUNK):
            counts = rng.poisson(per_min[m0:m0 + MINUTES_PER_CHUNK])
            starts = np.repeat(np.arange(m0, m0 + len(counts)) * 60.0, counts)
            arrival = np.sort(starts + rng.uniform(0.0, 60.0, len(starts)))
            pick = rng.integers(0, len(pool_in), len(arrival))
            table = pa.table({"arrival_s": arrival, "input_tokens": pool_in[pick].astype(np.int32),
                              "output_tokens": pool_out[pick].astype(np.int32)}, schema=schema)
            for start in range(0, table.num_rows, 1_000_000):
                writer.write_table(table.slice(start, 1_000_000))
            rows += table.num_rows
    return rows


def main() -> None:
    """Generate, time `tokenjoule project`, print the figures, delete the trace."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000_000)
    parser.add_argument("--dir", default=None, help="where to write the temp trace (default: system temp)")
    parser.add_argument("--replicas", type=int, default=32)
    parser.add_argument("--keep", action="store_true", help="keep the trace file")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tj-project-bench-", dir=args.dir))
    path = tmp / "week.parquet"
    try:
        t0 = time.perf_counter()
        rows = write_trace(path, args.requests)
        gen_s = time.perf_counter() - t0
        print(f"trace: {rows:,} requests, {path.stat().st_size / 1e9:.2f} GB, written in {gen_s:.1f} s")
        cmd = [sys.executable, "-c", "import sys; from tokenjoule.cli import main; sys.exit(main())",
               "project", str(path), "--profile", str(TOY), "--replicas", str(args.replicas), "--json"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall_s = time.perf_counter() - t0
        if done.returncode:
            sys.exit(f"project failed ({done.returncode}): {done.stderr.strip()}")
        rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # Linux: KiB
        data = json.loads(done.stdout)
        est = data["estimates"]
        la = est["load_aware"]
        print(f"project (paper + theoretical + load-aware): {wall_s:.1f} s wall, {rows / wall_s / 1e6:.2f} M req/s, "
              f"peak RSS {rss_gb:.2f} GB (targets: < 180 s, < 2 GB)")
        print(f"  paper {est['paper']['energy_j'] / 3.6e6:,.1f} kWh; theoretical "
              f"{est['theoretical']['energy_j'] / 3.6e6:,.1f} kWh; load-aware {la['energy_j'] / 3.6e6:,.1f} "
              f"+- {la['err_j'] / 3.6e6:,.2f} kWh ({la['windows']:,} windows, {la['simulations']} simulations of "
              f"{la['simulated_requests']:,} requests, utilization {la['utilization']:.1%}, run "
              f"{la['duration_s'] / 86400:.3f} days)")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
