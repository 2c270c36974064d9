"""Streaming stats + binning over a 20-million-row Parquet trace: wall time and peak memory (issue 2's target).

Target on the 2-core dev machine: under 60 s in total, peak RSS under 1 GB.
The trace is written in this process (a temp dir, 1M-row row groups); the work runs in fresh subprocesses, and the
peak RSS is read with resource.getrusage(RUSAGE_CHILDREN).ru_maxrss (the largest of the children waited for).

Run: python3 tests/bench/bench_trace_stream.py [--rows 20000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK_ROWS = 1_000_000

WORK = """
import json, sys, time
from tokenjoule.traces.binning import BinSpec
from tokenjoule.traces.stream import scan
t0 = time.perf_counter()
r = scan(sys.argv[1], spec=BinSpec(), window_s=3600.0)
s = r.stats
print(json.dumps({"seconds": time.perf_counter() - t0, "rows": s.rows, "span_s": s.span_s,
                  "input_p50": s.input_tokens.p50, "output_p99": s.output_tokens.p99, "cv": s.interarrival_cv,
                  "dispersion": s.dispersion_1s, "binned": r.bins.binned, "excluded": r.bins.excluded,
                  "windows": len(r.bins.counts)}))
"""


def write_trace(path: Path, rows: int, seed: int = 0) -> None:
    """A canonical trace: Poisson arrivals at 1000 req/s, log-normal lengths, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("request_id", pa.int64()), ("arrival_s", pa.float64()), ("input_tokens", pa.int32()),
                        ("output_tokens", pa.int32())])
    t = 0.0
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            arrival = t + np.cumsum(rng.exponential(1e-3, n))
            t = float(arrival[-1])
            inp = np.clip(rng.lognormal(6.5, 1.2, n), 1, 200_000).astype(np.int32)
            out = np.clip(rng.lognormal(4.5, 1.0, n), 1, 8_000).astype(np.int32)
            writer.write_table(pa.table([np.arange(start, start + n), arrival, inp, out], schema=schema),
                               row_group_size=CHUNK_ROWS)


def run_child(code: list[str]) -> tuple[float, str]:
    """Run a fresh interpreter; return its wall time and stdout."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, *code], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, done.stdout


def main() -> None:
    """Write the trace, stream it (library pass, then the two CLI commands), print the figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.parquet"
        t0 = time.perf_counter()
        write_trace(path, rows)
        print(f"wrote {rows:,} rows ({path.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t0:.1f} s")

        wall, out = run_child(["-c", WORK, str(path)])
        rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
        figures = json.loads(out)
        print(f"stats + binning, one streamed pass: {figures['seconds']:.1f} s of work, {wall:.1f} s with "
              f"interpreter start; peak RSS {rss_mib:,.0f} MiB")
        print(f"  rows {figures['rows']:,}, span {figures['span_s']:,.0f} s, input p50 {figures['input_p50']}, "
              f"output p99 {figures['output_p99']}, CV {figures['cv']:.3f}, dispersion {figures['dispersion']:.3f}, "
              f"binned {figures['binned']:,} + excluded {figures['excluded']:,}, {figures['windows']} windows")
        for command in ("stats", "bin"):
            wall, _ = run_child(["-m", "tokenjoule.cli", "trace", command, str(path), "--json"])
            print(f"tokenjoule trace {command} (CLI, separate pass): {wall:.1f} s")
        rss_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS over all three children: {rss_mib:,.0f} MiB")


if __name__ == "__main__":
    main()
