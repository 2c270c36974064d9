"""Simulator speed: the full Azure conv 2023 trace, and a 1-million-request synthetic trace, on one core.

Targets (issue 5): azure-conv-2023 (19,366 requests) under continuous batching in <= 2 s; >= 20,000 simulated
requests/s on 1M requests. Prints wall times, requests/s, events-free memory (peak RSS) and the conservation error.

Run: python tests/bench/bench_sim_speed.py [--n 1000000] [--profile PATH]
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from tokenjoule.calibrate.profile import load_profile
from tokenjoule.sim.run import SimConfig, run
from tokenjoule.traces.loaders import load_trace
from tokenjoule.traces.synth import SynthSpec, synthesize

TOY = Path(__file__).parents[1] / "fixtures" / "profiles" / "toy_h100_llama-3.1-8b.json"


def _timed(config, trace, profile, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = run(config, trace, profile)
        best = min(best, time.perf_counter() - t0)
    return best, result


def _line(name, n, seconds, result):
    s = result.summary
    print(f"{name:<44} {n:>9,} req  {seconds:7.2f} s  {n / seconds:>9,.0f} req/s  "
          f"J/req {s['j_per_request']:8.2f}  conservation {s['conservation_rel_error']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--profile", default=str(TOY))
    args = parser.parse_args()
    profile = load_profile(args.profile)
    azure = load_trace("azure-conv-2023")
    for policy in ("continuous", "chunked", "static"):
        seconds, result = _timed(SimConfig(policy=policy), azure, profile, 3)
        _line(f"azure-conv-2023 {policy} (best of 3)", len(azure), seconds, result)
    # 1M requests: lengths resampled from the Azure trace, Poisson arrivals at 5 req/s per replica, 8 replicas.
    big = synthesize(SynthSpec(args.n, rate_per_s=40.0), np.random.default_rng(0), lengths_from=azure)
    for policy in ("continuous", "chunked"):
        seconds, result = _timed(SimConfig(policy=policy, replicas=8), big, profile, 1)
        _line(f"synthetic 1M {policy} 8 replicas @40 req/s", len(big), seconds, result)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss_mb:,.0f} MB (includes the 1M-row trace and per-request result columns)")


if __name__ == "__main__":
    main()
